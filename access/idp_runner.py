"""Run the demo/test OpenID provider (access/idp/server.js, oidc-provider under node).

`IdPProcess(port, users).start()` writes the users and signing keys to a work folder,
starts node, and waits for the discovery document. `rotate_key()` puts a new signing
key in front (the old one stays published) and restarts, as an IdP rotating keys does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from auditcast.errors import ConfigError

IDP_DIR: Final = Path(__file__).resolve().parent / "idp"
CLIENT_ID: Final = "auditcast"
READY_TIMEOUT_S: Final = 20.0

DEMO_USERS: Final[dict[str, dict[str, Any]]] = {
    "alice": {"password": "alice-pass", "email": "alice@example.com", "groups": ["admins"]},
    "bob": {"password": "bob-pass", "email": "bob@example.com", "groups": ["developers"]},
    "carol": {"password": "carol-pass", "email": "carol@example.com", "groups": ["contractors"]},
    "dave": {"password": "dave-pass", "email": "dave@example.com", "groups": ["auditors"]},
}


def new_signing_jwk() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update({"kid": uuid.uuid4().hex[:12], "use": "sig", "alg": "RS256"})
    return dict(jwk)


class IdPProcess:
    def __init__(
        self,
        port: int,
        workdir: Path,
        users: dict[str, dict[str, Any]] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port, self.host, self.workdir = port, host, workdir
        self.users = users or DEMO_USERS
        self.issuer = f"http://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.keys_file = workdir / "idp-jwks.json"
        self.users_file = workdir / "idp-users.json"
        self.log_file = workdir / "idp.log"

    def start(self) -> IdPProcess:
        node = shutil.which("node")
        if node is None:
            raise ConfigError("the demo OpenID provider needs node", hint="apt install nodejs")
        if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
            raise ConfigError(
                "oidc-provider is not installed",
                hint="run scripts/bootstrap.sh (npm install in access/idp)",
            )
        self.users_file.write_text(json.dumps(self.users))
        if not self.keys_file.exists():
            self.keys_file.write_text(json.dumps({"keys": [new_signing_jwk()]}))
        self.keys_file.chmod(0o600)
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [
                node, str(IDP_DIR / "server.js"), "--issuer", self.issuer, "--port", str(self.port),
                "--host", self.host, "--users", str(self.users_file), "--keys", str(self.keys_file),
                "--client-id", CLIENT_ID,
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"the OpenID provider exited: {self.log_file.read_text()[-2000:]}"
                )
            try:
                r = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"the OpenID provider did not start: {self.log_file.read_text()[-2000:]}")

    def rotate_key(self) -> None:
        keys = json.loads(self.keys_file.read_text())["keys"]
        self.keys_file.write_text(json.dumps({"keys": [new_signing_jwk(), *keys]}))
        self.stop()
        self.start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
