"""The API process's small SQLite database, `$AUDITCAST_HOME/access.db`.

It holds what only the API (the authority) knows and must survive a restart of the
embedded, memory-only broker: active locks, access requests, MFA devices and the
TOTP time steps already used. Each module creates its own tables.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from auditcast.settings import Settings


def access_db_path(settings: Settings) -> Path:
    return settings.home_dir / "access.db"


def connect(settings: Settings) -> sqlite3.Connection:
    """A connection usable from worker threads (calls are serialised by the caller)."""
    conn = sqlite3.connect(access_db_path(settings), check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn
