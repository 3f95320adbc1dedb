"""Structured JSON logging with ids bound, so one session can be followed across processes."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

# Context fields a log call may pass in `extra=` and that end up as top-level keys.
BOUND_FIELDS = ("event_id", "session_id", "credential_id", "topic", "partition", "offset", "user")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in BOUND_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (or `stream`); idempotent."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; keep them, but not at INFO chatter.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
