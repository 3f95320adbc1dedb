"""Settings: environment variables `AUDITCAST_*`, then an optional TOML file, then defaults.

The TOML file is `$AUDITCAST_CONFIG`, else `$AUDITCAST_HOME/auditcast.toml`. Every
default listens on loopback only.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_HOME = Path("~/.auditcast")


def _config_file() -> Path:
    explicit = os.environ.get("AUDITCAST_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    home = Path(os.environ.get("AUDITCAST_HOME", str(DEFAULT_HOME))).expanduser()
    return home / "auditcast.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITCAST_", extra="ignore")

    home: Path = DEFAULT_HOME
    # Bootstrap servers of an external Kafka cluster; empty means the embedded broker.
    kafka: str | None = None
    # Idempotent producers: "auto" turns them on except on the embedded Tansu broker,
    # whose InitProducerId fails (DESIGN §4); stores dedupe by id either way.
    kafka_idempotence: Literal["auto", "on", "off"] = "auto"
    # How producers compress their record batches. Envelopes (JSON) and terminal output
    # compress ~10-20x; with zstd the embedded broker spends a quarter of the CPU per
    # event it spent on plain batches (measured by tests/bench/bench_pipeline.py), for
    # ~0.4 µs of the producer's per event. Consumers read every kind without settings.
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    topic_prefix: str = "auditcast."
    # events.raw and session.frames must share a partition count: session assembly
    # joins them by session_id.
    partitions: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    bind_host: str = "127.0.0.1"
    broker_port: int = 3092
    api_port: int = 3080
    kube_port: int = 3026
    ssh_port: int = 3022
    webhook_port: int = 3027

    # Spool: the collector's durable outbox.
    spool_max_bytes: int = 1024 * 1024 * 1024
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    spool_retention_seconds: float = 15 * 60
    spool_retention_max_bytes: int = 256 * 1024 * 1024
    # "process": a child process sends to Kafka (off the collector's event loop);
    # "inline": a task on the collector's own loop sends.
    spool_sender: Literal["process", "inline"] = "inline"
    # The gateways' event loop: uvloop (libuv; its TLS and transports are compiled) or
    # the standard library's. Measured on the kube gateway: ~20 % less CPU per request.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    log_level: str = "INFO"

    # SSO (OpenID Connect). `auditcast up --demo` points these at the demo provider.
    oidc_issuer: str | None = None
    oidc_client_id: str = "auditcast"
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid email profile groups"
    oidc_groups_claim: str = "groups"
    oidc_username_claim: str = "preferred_username"
    # Where clients reach the API (written into the login profile).
    api_url: str | None = None

    # Locks (access/locks.py): a gateway's lock view older than this is stale; in strict
    # mode a stale view refuses every check. Teleport's default cache staleness is 5 min.
    lock_stale_after: float = Field(default=300.0, gt=0)
    lock_mode: Literal["best_effort", "strict"] = "best_effort"
    # Access requests: Slack-compatible incoming webhook notified on create and review.
    request_webhook_url: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @cached_property
    def home_dir(self) -> Path:
        """AUDITCAST_HOME, expanded and created (0700: it holds the CA keys)."""
        p = self.home.expanduser()
        p.mkdir(parents=True, exist_ok=True, mode=0o700)
        return p

    @property
    def run_dir(self) -> Path:
        p = self.home_dir / "run"
        p.mkdir(exist_ok=True)
        return p

    @property
    def log_dir(self) -> Path:
        p = self.home_dir / "logs"
        p.mkdir(exist_ok=True)
        return p

    @property
    def spool_dir(self) -> Path:
        return self.home_dir / "spool"

    @property
    def db_path(self) -> Path:
        return self.home_dir / "audit.db"

    @property
    def recordings_dir(self) -> Path:
        return self.home_dir / "recordings"

    @property
    def broker_file(self) -> Path:
        """Where `auditcast up` publishes the embedded broker's address."""
        return self.run_dir / "broker.json"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
