"""Fixtures for sign-in tests: the real OpenID provider (oidc-provider under node), a
real `auditcast api` process, and a helper that runs a real `auditcast login` and
completes it over HTTP the way a browser would.

- `idp`: the demo IdP (users alice/admins, bob/developers, carol/contractors,
  dave/auditors; password `<name>-pass`), one per test session.
- `access_api`: `auditcast api` on a free port with its own server home: example roles,
  three clusters (staging-1, staging-2: environment=staging; prod-1: production), two
  nodes, topics on the session broker. `running_api(root, settings, idp, **env)` is the
  same as a context manager, for an API with other settings or environment.
- `access_api.login(user, *extra_args, device=False)`: a fresh client home for that
  user, logged in with `auditcast login --json` (browser flow: the printed URL is
  completed by `browser_sign_in`; `device=True`: `auditcast login --device`, completed by
  `device_sign_in`); returns a `Client` that runs CLI verbs as that user
  (`client.run(...)`, `client.json(...)`, `client.env` for kubectl/ssh, `client.home`,
  `client.login_output`). `access_api.token(client)` is its auditcast session token for
  direct REST calls (`Authorization: Bearer ...`).
- `browser_sign_in(url, user, password)` / `device_sign_in(url, user, password)`: what
  a person does in the browser, over HTTP with httpx.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from auditcast.access.idp_runner import DEMO_USERS, IdPProcess
from auditcast.broker import EmbeddedBroker, free_port
from auditcast.settings import Settings
from tests.helpers.broker import isolated_settings, settings_env

AUDITCAST = str(Path(sys.executable).with_name("auditcast"))
CLUSTERS = {
    "clusters": [
        {"name": "staging-1", "url": "https://127.0.0.1:1", "labels": {"environment": "staging"}},
        {"name": "staging-2", "url": "https://127.0.0.1:1", "labels": {"environment": "staging"}},
        {"name": "prod-1", "url": "https://127.0.0.1:1", "labels": {"environment": "production"}},
    ]
}
NODES = {
    "nodes": [
        {"name": "node1", "address": "127.0.0.1", "port": 22, "labels": {"environment": "staging"}},
        {
            "name": "db1",
            "address": "127.0.0.1",
            "port": 22,
            "labels": {"environment": "production"},
        },
    ]
}
URL_LINE = re.compile(r"^\s+(http://\S+/auth\?\S+)$")
DEVICE_URL_LINE = re.compile(r"^\(or open (http://\S+)\)$")
INPUT = re.compile(r"<input\b[^>]*>", re.S)
ATTR = re.compile(r'(name|value)="([^"]*)"')


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdPProcess]:
    proc = IdPProcess(free_port(), tmp_path_factory.mktemp("idp")).start()
    yield proc
    proc.stop()


def browser_sign_in(url: str, user: str, password: str) -> httpx.Response:
    """What a person does in the browser: open the URL, submit the login form. The IdP
    then redirects to the CLI's loopback callback, which this client follows too."""
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = browser.get(url)
        action = re.search(r'action="([^"]+)"', page.text)
        assert page.status_code == 200 and action, page.text[:500]
        return browser.post(
            str(page.url.join(action.group(1))), data={"username": user, "password": password}
        )


def device_sign_in(url: str, user: str, password: str) -> httpx.Response:
    """The device flow in a browser: open the verification URL (code prefilled), submit
    the code and confirm forms the IdP renders, then the login form."""
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = browser.get(url)
        for _ in range(4):
            action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
            assert page.status_code == 200 and action, page.text[:500]
            if "/interaction/" in action.group(1):
                return browser.post(
                    str(page.url.join(action.group(1))),
                    data={"username": user, "password": password},
                )
            form = page.text[action.start() : page.text.index("</form>", action.start())]
            fields = {}
            for tag in INPUT.findall(form):
                attrs = dict(ATTR.findall(tag))
                if "name" in attrs:
                    fields[attrs["name"]] = attrs.get("value", "")
            page = browser.post(str(page.url.join(action.group(1))), data=fields)
        raise AssertionError(f"no login form in the device flow: {page.text[:500]}")


# How long `auditcast login` may take to print its sign-in URL (a cold start of the CLI
# on a loaded 2-core CI machine has taken over 30 s).
LOGIN_URL_TIMEOUT_S = 120.0


@dataclass
class Client:
    user: str
    home: Path
    env: dict[str, str]
    login_output: dict = field(default_factory=dict)

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([AUDITCAST, *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)  # fmt: skip
        if check:
            assert out.returncode == 0, f"auditcast {' '.join(args)}: {out.stderr}"
        return out

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout)


@dataclass
class AccessAPI:
    url: str
    settings: Settings
    idp: IdPProcess
    root: Path
    proc: subprocess.Popen[bytes]

    def client(self, user: str) -> Client:
        home = self.root / f"client-{user}-{time.monotonic_ns()}"
        env = {
            **os.environ, "AUDITCAST_HOME": str(home), "KUBECONFIG": str(home / "kubeconfig"),
            "BROWSER": "true", "AUDITCAST_TOPIC_PREFIX": self.settings.topic_prefix,
        }  # fmt: skip
        env.pop("AUDITCAST_API_URL", None)
        env.pop("AUDITCAST_TOKEN", None)
        return Client(user, home, env)

    def login(
        self, user: str, *extra: str, password: str | None = None, client: Client | None = None,
        device: bool = False,
    ) -> Client:  # fmt: skip
        c = client or self.client(user)
        flow = ["--device"] if device else []
        proc = subprocess.Popen(
            [AUDITCAST, "login", "--proxy", self.url, "--json", *flow, *extra],
            env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        url = None
        pattern = DEVICE_URL_LINE if device else URL_LINE
        seen: list[str] = []  # everything login said before the URL, for a failure
        # Read until the URL or EOF; a watchdog ends a login that never prints it. (A
        # deadline checked between lines gave up on a login that was merely slow to
        # start on a loaded CI machine: its first line came just after the deadline.)
        watchdog = threading.Timer(LOGIN_URL_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            while url is None:
                line = proc.stderr.readline()
                if not line:
                    break
                seen.append(line)
                m = pattern.match(line.rstrip("\n"))
                url = m.group(1) if m else None
        finally:
            watchdog.cancel()
        if url is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            rest = proc.stderr.read() if proc.poll() is not None else "(still running)"
            raise AssertionError(
                f"login printed no URL (exit {proc.returncode}): {''.join(seen)}{rest}"
            )
        sign_in = device_sign_in if device else browser_sign_in
        done = sign_in(url, user, password or DEMO_USERS[user]["password"])
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (
            f"login failed: {err}\nbrowser saw {done.status_code}: {done.text[:300]}"
        )
        assert ("Sign-in Success" if device else "signed in") in done.text, done.text[:300]
        c.login_output = json.loads(out)
        return c

    def token(self, c: Client) -> str:
        """The client's auditcast session token (for direct REST calls)."""
        return str(json.loads((c.home / "profile.json").read_text())["token"])


@contextmanager
def running_api(
    root: Path, s: Settings, idp: IdPProcess, **env_overrides: str
) -> Iterator[AccessAPI]:
    """`auditcast api` with the home of `s` (clusters and nodes written), on a free port,
    until the block ends. `env_overrides` (e.g. AUDITCAST_KAFKA) change its environment."""
    server_home = s.home_dir
    (server_home / "kube-clusters.yaml").write_text(yaml.safe_dump(CLUSTERS))
    (server_home / "nodes.yaml").write_text(yaml.safe_dump(NODES))
    port = free_port()
    env = {**os.environ, **settings_env(s), "AUDITCAST_OIDC_ISSUER": idp.issuer,
           "AUDITCAST_API_PORT": str(port), **env_overrides}  # fmt: skip
    log_path = root / f"api-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([AUDITCAST, "api"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        log.close()
        raise AssertionError(log_path.read_text()[-3000:])
    try:
        yield AccessAPI(url, s, idp, root, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def access_api(broker: EmbeddedBroker, idp: IdPProcess, tmp_path: Path) -> Iterator[AccessAPI]:
    s = isolated_settings(tmp_path / "server", broker.bootstrap)
    with running_api(tmp_path, s, idp) as api:
        yield api
