"""The process tree of `auditcast up`: the embedded broker and one child per service.

The kernel must not import the parts (DESIGN §1), so every service runs as a child
process through its own CLI verb (`auditcast worker`, `auditcast store`, ...). Each
child gets its own process group (a Ctrl-C in the terminal reaches only this
supervisor, which then stops everything in order) and its log in
`$AUDITCAST_HOME/logs/<name>.log`.

A child that dies is restarted with backoff. The embedded broker keeps data only in
memory: when it dies it is restarted with a new cluster id, the topics are created
again and `broker.json` is republished; clients notice the new id and replay their
spool window (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from auditcast import lifeline
from auditcast.broker import EmbeddedBroker, port_open
from auditcast.errors import BrokerUnavailable, ConfigError
from auditcast.kafka import ensure_topics
from auditcast.settings import Settings

log = logging.getLogger("auditcast.up")

# How long a child gets to exit after SIGTERM before SIGKILL. Faust flushes its producer
# and leaves the group on stop, which takes a few seconds on the embedded broker.
STOP_GRACE_S: Final = 10.0
# Restart backoff: 0.5 s doubling to 30 s; a child that ran this long starts over at 0.5 s.
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
STABLE_AFTER_S: Final = 60.0
# A service without its own readiness signal counts as ready once it stayed up this long.
SETTLE_S: Final = 1.0
READY_TIMEOUT_S: Final = 90.0
# A service that exits this many times before ever becoming ready is reported as
# failing (it keeps being retried with backoff) instead of holding up start-up.
FAILING_AFTER: Final = 3
# A service exiting with ConfigError's code is not set up on this machine (e.g. a
# gateway without an upstream cluster configured): restarting cannot help.
NOT_CONFIGURED_EXIT: Final = ConfigError.exit_code
POLL_S: Final = 0.2


@dataclass(frozen=True)
class ServiceSpec:
    """One line of the service table: how to run a part and how to know it is ready."""

    name: str
    argv: tuple[str, ...]  # the `auditcast` verb and its arguments
    # Readiness: a file the service writes under run_dir, or a port it listens on.
    ready_file: str | None = None
    port: Callable[[Settings], int] | None = None
    # Consumers whose group state lives only in the embedded broker's memory restart
    # with it, so they rejoin the new broker from a clean state.
    restart_on_new_broker: bool = False

    def address(self, s: Settings) -> str:
        return f"{s.bind_host}:{self.port(s)}" if self.port else "-"


# The parts `auditcast up` runs, in start order (stopped in reverse). A later part adds
# one line here; a verb not registered yet shows as "not available".
SERVICES: Final[tuple[ServiceSpec, ...]] = (
    ServiceSpec("worker", ("worker",), ready_file="worker.ready", restart_on_new_broker=True),
    ServiceSpec("store", ("store",), ready_file="store.ready", restart_on_new_broker=True),
    ServiceSpec("spool", ("spool", "drain", "--follow")),
    ServiceSpec("api", ("api",), port=lambda s: s.api_port),
    ServiceSpec("kube-gateway", ("kube-gateway",), port=lambda s: s.kube_port),
    ServiceSpec("ssh-gateway", ("ssh-gateway",), port=lambda s: s.ssh_port),
    ServiceSpec("audit-webhook", ("audit-webhook",), port=lambda s: s.webhook_port),
)


def verb_available(verb: str) -> bool:
    """Registered in the CLI and its module is installed (checked without importing it)."""
    from auditcast.cli import COMMANDS

    target = COMMANDS.get(verb)
    if target is None:
        return False
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def auditcast_command() -> list[str]:
    """How to run the `auditcast` CLI from this very installation."""
    script = Path(sys.executable).with_name("auditcast")
    if script.exists():
        return [str(script)]
    found = shutil.which("auditcast")
    if found:
        return [found]
    return [sys.executable, "-c", "from auditcast.cli import main; main()"]


@dataclass
class Child:
    """A running (or restartable) service process."""

    spec: ServiceSpec
    log_path: Path
    # not available | not configured | starting | ready | restarting | failing | stopped
    state: str = "stopped"
    ever_ready: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = BACKOFF_FIRST_S
    last_exit: int | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts the broker and the services, keeps them running, stops them in order."""

    def __init__(self, settings: Settings, services: tuple[ServiceSpec, ...] = SERVICES):
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.broker_restarts = 0
        self.bootstrap = settings.kafka or ""
        self.cluster_id = ""
        self.children = [Child(spec, settings.log_dir / f"{spec.name}.log") for spec in services]
        self._stopping = asyncio.Event()
        self._broker_backoff = BACKOFF_FIRST_S
        self._status_file = settings.run_dir / "up.json"
        self._pid_file = settings.run_dir / "up.pid"

    # --- start ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.kafka:
            await ensure_topics(self.settings, self.settings.kafka)
        else:
            await self._start_broker()
        for child in self.children:
            if not verb_available(child.spec.argv[0]):
                child.state = "not available"
                continue
            self._spawn(child)
        self.write_status()

    def claim_home(self) -> None:
        """One `auditcast up` per AUDITCAST_HOME: a second would fight over broker.json."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            other = int(self._pid_file.read_text())
            if other != os.getpid() and lifeline.pid_alive(other):
                raise ConfigError(
                    f"auditcast up is already running for {self.settings.home_dir} (pid {other})",
                    hint="stop it first, or set AUDITCAST_HOME to another directory",
                )
        self._pid_file.write_text(str(os.getpid()))

    async def _start_broker(self) -> None:
        s = self.settings
        broker = EmbeddedBroker(
            s.bind_host, s.broker_port, log_path=s.log_dir / "broker.log", die_with_parent=True
        )
        info = await broker.start()
        self.broker = broker
        self.bootstrap = broker.bootstrap
        self.cluster_id = info.cluster_id
        await ensure_topics(s, broker.bootstrap)
        # Published only once the topics exist, so a client that finds it can use it.
        broker.publish(s.broker_file)
        log.info(
            "embedded broker ready",
            extra={"fields": {"bootstrap": broker.bootstrap, "cluster_id": info.cluster_id}},
        )

    def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        if child._log is None:
            child._log = open(child.log_path, "ab")
        if child.spec.ready_file:
            (self.settings.run_dir / child.spec.ready_file).unlink(missing_ok=True)
        child.proc = subprocess.Popen(
            [*auditcast_command(), *child.spec.argv],
            stdin=subprocess.DEVNULL,
            stdout=child._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: we stop it, not the terminal
            # stopped by the kernel if we are killed outright (spawned on the main thread)
            preexec_fn=lifeline.die_with_parent(),
            env=self._child_env(),
        )
        child.started_at = time.monotonic()
        if child.state != "failing":
            child.state = "starting"
        log.info("started", extra={"fields": {"service": child.spec.name, "pid": child.pid}})

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["AUDITCAST_HOME"] = str(self.settings.home_dir)
        return env

    # --- readiness -----------------------------------------------------------------

    def is_ready(self, child: Child) -> bool:
        if not child.running:
            return False
        spec = child.spec
        if spec.ready_file:
            return (self.settings.run_dir / spec.ready_file).exists()
        if spec.port:
            return port_open(self.settings.bind_host, spec.port(self.settings))
        return time.monotonic() - child.started_at >= SETTLE_S

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> list[str]:
        """Wait until every started service is ready; returns the names still not ready."""
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set():
            await self.tick()
            pending = [
                c.spec.name
                for c in self.children
                if c.state in ("starting", "restarting")
                and (c.ever_ready or c.restarts < FAILING_AFTER)
            ]
            if not pending or time.monotonic() > deadline:
                self.write_status()
                return pending
            await asyncio.sleep(POLL_S)
        return []

    # --- supervision ---------------------------------------------------------------

    async def tick(self) -> None:
        """One supervision step: restart what died, note what became ready."""
        if self.broker is not None and not self.broker.running:
            await self._restart_broker()
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.state in ("not available", "not configured", "stopped"):
                continue
            if child.proc is not None and child.proc.poll() is not None:
                child.last_exit = child.proc.returncode
                child.proc = None
                changed = True
                if child.last_exit == NOT_CONFIGURED_EXIT:
                    child.state = "not configured"
                    log.warning(
                        "service is not configured; not restarting it",
                        extra={"fields": {"service": child.spec.name, "log": str(child.log_path)}},
                    )
                    continue
                ran = now - child.started_at
                if ran >= STABLE_AFTER_S:
                    child.backoff = BACKOFF_FIRST_S
                child.next_start = now + child.backoff
                log.warning(
                    "service exited; restarting",
                    extra={
                        "fields": {
                            "service": child.spec.name,
                            "code": child.last_exit,
                            "in_s": child.backoff,
                        }
                    },
                )
                child.backoff = min(child.backoff * 2, BACKOFF_MAX_S)
                failing = not child.ever_ready and child.restarts + 1 >= FAILING_AFTER
                child.state = "failing" if failing else "restarting"
            if (
                child.proc is None
                and child.state in ("restarting", "failing")
                and now >= child.next_start
            ):
                child.restarts += 1
                self._spawn(child)
                changed = True
            if child.state in ("starting", "failing") and self.is_ready(child):
                child.state = "ready"
                child.ever_ready = True
                log.info("ready", extra={"fields": {"service": child.spec.name, "pid": child.pid}})
                changed = True
        if changed:
            self.write_status()

    async def _restart_broker(self) -> None:
        """A new, empty broker on the same address, with our topics created first.

        Tansu creates any topic a client merely asks metadata for (4 partitions, no
        compaction). Our children would reconnect within milliseconds and win that race
        against `ensure_topics`, so they are paused (SIGSTOP) until the topics exist.
        """
        assert self.broker is not None
        code = self.broker.proc.returncode if self.broker.proc else None
        log.error("embedded broker died; restarting it", extra={"fields": {"code": code}})
        self.settings.broker_file.unlink(missing_ok=True)
        self.broker.stop()
        self.broker = None
        paused = [c for c in self.children if c.running]
        for child in paused:
            if child.pid:
                _signal_group(child.pid, signal.SIGSTOP)
        try:
            while not self._stopping.is_set():
                try:
                    await self._start_broker()
                    self.broker_restarts += 1
                    self._broker_backoff = BACKOFF_FIRST_S
                    break
                except BrokerUnavailable as e:
                    log.error(
                        "embedded broker restart failed",
                        extra={"fields": {"error": e.message, "retry_in_s": self._broker_backoff}},
                    )
                    await asyncio.sleep(self._broker_backoff)
                    self._broker_backoff = min(self._broker_backoff * 2, BACKOFF_MAX_S)
        finally:
            for child in paused:
                if child.pid:
                    _signal_group(child.pid, signal.SIGCONT)
        for child in paused:
            if child.spec.restart_on_new_broker and child.running:
                # Its group and offsets died with the old broker; a fresh process rejoins
                # cleanly (the stores dedupe what it reads again).
                await asyncio.to_thread(_stop_child, child, STOP_GRACE_S / 2)
                child.state = "restarting"
                child.next_start = time.monotonic()
        self.write_status()

    async def run(self) -> None:
        """Supervise until stop() is called."""
        while not self._stopping.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), POLL_S)

    def request_stop(self) -> None:
        self._stopping.set()

    # --- stop ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the services in reverse start order, then the broker. Nothing stays."""
        self._stopping.set()
        for child in reversed(self.children):
            if child.proc is not None:
                await asyncio.to_thread(_stop_child, child, STOP_GRACE_S)
            if child.state not in ("not available", "not configured"):
                child.state = "stopped"
            if child._log is not None:
                child._log.close()
                child._log = None
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
            self.broker.unpublish(self.settings.broker_file)
            self.broker = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int(self._pid_file.read_text()) == os.getpid():
                self._status_file.unlink(missing_ok=True)
                self._pid_file.unlink()

    # --- status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.settings
        broker: dict[str, Any]
        if self.broker is not None:
            broker = {
                "name": "broker",
                "state": "ready" if self.broker.running else "restarting",
                "pid": self.broker.proc.pid if self.broker.proc else None,
                "address": self.broker.bootstrap,
                "cluster_id": self.cluster_id,
                "restarts": self.broker_restarts,
                "log": str(s.log_dir / "broker.log"),
            }
        else:
            broker = {
                "name": "broker",
                "state": "external",
                "pid": None,
                "address": self.bootstrap,
                "restarts": 0,
                "log": None,
            }
        services = [
            {
                "name": c.spec.name,
                "state": c.state,
                "pid": c.pid,
                "address": c.spec.address(s),
                "restarts": c.restarts,
                "last_exit": c.last_exit,
                "log": None if c.state == "not available" else str(c.log_path),
                "command": "auditcast " + " ".join(c.spec.argv),
            }
            for c in self.children
        ]
        return {
            "pid": os.getpid(),
            "home": str(s.home_dir),
            "bootstrap": self.bootstrap,
            "services": [broker, *services],
        }

    def write_status(self) -> None:
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
        tmp.replace(self._status_file)


def _stop_child(child: Child, grace: float) -> None:
    """SIGTERM to the child's process group, SIGKILL after the grace period."""
    proc = child.proc
    if proc is None:
        return
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning(
                "service ignored SIGTERM; killing it",
                extra={"fields": {"service": child.spec.name, "pid": proc.pid}},
            )
    # Whatever the child left in its group (grandchildren) goes too.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    child.last_exit = proc.returncode
    child.proc = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# `auditcast up --demo` runs the demo OpenID provider first, so the API can verify
# sign-ins against it (`auditcast login` then works on one machine out of the box).
DEMO_IDP_PORT: Final = 3081
DEMO_SERVICES: Final[tuple[ServiceSpec, ...]] = (
    ServiceSpec(
        "demo-idp", ("demo-idp", "--port", str(DEMO_IDP_PORT)), port=lambda s: DEMO_IDP_PORT
    ),
)


def demo_issuer(settings: Settings) -> str:
    return f"http://{settings.bind_host}:{DEMO_IDP_PORT}"


async def run_up(
    settings: Settings,
    on_ready: Callable[[Supervisor, list[str]], None],
    services: tuple[ServiceSpec, ...] = SERVICES,
) -> None:
    """Start everything, report readiness through `on_ready`, supervise until SIGINT/SIGTERM."""
    sup = Supervisor(settings, services)
    sup.claim_home()  # before anything starts: a refused second `up` touches nothing
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sup.request_stop)
    try:
        await sup.start()
        pending = await sup.wait_ready()
        if not sup._stopping.is_set():
            on_ready(sup, pending)
            await sup.run()
    finally:
        await sup.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
