"""The signed-in user's profile on this machine: `$AUDITCAST_HOME/profile.json` plus the
SSH key and certificate in `ssh/`, cached kube tokens in `kube/`. Files are 0600."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from auditcast.errors import LoginRequired
from auditcast.settings import Settings, load_settings


class Profile(BaseModel):
    api_url: str
    token: str
    user: str
    roles: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    email: str | None = None
    expires: datetime
    kube_groups: list[str] = Field(default_factory=list)
    logins: list[str] = Field(default_factory=list)
    require_session_mfa: bool = False
    access_requests: list[str] = Field(default_factory=list)
    clusters: list[str] = Field(default_factory=list)

    @property
    def expired(self) -> bool:
        return self.expires <= datetime.now(UTC)


def profile_path(settings: Settings) -> Path:
    return settings.home_dir / "profile.json"


def write_private(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def save_profile(settings: Settings, profile: Profile) -> None:
    write_private(profile_path(settings), profile.model_dump_json(indent=2))


def load_profile(settings: Settings | None = None) -> Profile:
    s = settings or load_settings()
    try:
        data: dict[str, Any] = json.loads(profile_path(s).read_text())
    except FileNotFoundError:
        raise LoginRequired("not logged in") from None
    profile = Profile.model_validate(data)
    if profile.expired:
        raise LoginRequired(
            f"your auditcast session expired at {profile.expires:%Y-%m-%d %H:%M} UTC"
        )
    return profile


def ssh_dir(settings: Settings) -> Path:
    return settings.home_dir / "ssh"


def kube_cache_dir(settings: Settings) -> Path:
    return settings.home_dir / "kube"
