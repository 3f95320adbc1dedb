"""`auditcast kube credentials` (the kubectl exec plugin) and `auditcast kube ls`.

`credentials` runs on every kubectl call, so it imports little (no pydantic, no httpx
on a cache hit) and answers from the token cache while the cached token is valid for at
least `REFRESH_MARGIN_S` more. `auditcast login` and `logout` empty the cache.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click

REFRESH_MARGIN_S: Final = 30
EXEC_API: Final = "client.authentication.k8s.io/v1"
# The token cache, `$AUDITCAST_HOME/kube/` (access.profile.kube_cache_dir).
KUBE_CACHE: Final = "kube"
CLUSTER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# auditcast.cli._util.json_option, declared here so this module does not import settings.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _home_without_settings() -> Path | None:
    """$AUDITCAST_HOME as Settings resolves it, without importing pydantic-settings; None
    when a settings file is in play (it could move the home: load the settings then)."""
    if os.environ.get("AUDITCAST_CONFIG"):
        return None
    home = Path(os.environ.get("AUDITCAST_HOME") or "~/.auditcast").expanduser()
    return None if (home / "auditcast.toml").exists() else home


def exec_credential(token: str, expires: str) -> dict[str, Any]:
    exp = datetime.fromisoformat(expires).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": EXEC_API,
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": exp},
    }


def _prompt_code() -> str:
    """Ask on the terminal (kubectl passes it through with interactiveMode IfAvailable)."""
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write("auditcast: enter the code from your authenticator app: ")
            tty.flush()
            return tty.readline().strip()
    except OSError:
        raise click.ClickException(
            "this role needs a fresh MFA code for each session, and there is no terminal to ask on"
        ) from None


@click.group()
def kube() -> None:
    """Kubernetes access through the auditcast gateway."""


@kube.command("credentials")
@click.option("--cluster", required=True, help="The auditcast cluster name.")
def credentials(cluster: str) -> None:
    """Print a short-lived ExecCredential for kubectl (used from kubeconfig, not by hand)."""
    if not CLUSTER_NAME.match(cluster):
        raise click.BadParameter(f"not a cluster name: {cluster!r}", param_hint="--cluster")
    home = _home_without_settings()
    if home is not None:
        cache = home / KUBE_CACHE / f"{cluster}.json"
        try:
            cached = json.loads(cache.read_text())
            left = datetime.fromisoformat(cached["expires"]) - datetime.now(UTC)
            if left.total_seconds() > REFRESH_MARGIN_S:
                print(json.dumps(exec_credential(cached["token"], cached["expires"])))
                return
        except (OSError, ValueError, KeyError):
            pass

    from auditcast.access.cli_common import api_call
    from auditcast.access.profile import kube_cache_dir, load_profile, write_private
    from auditcast.cli._util import settings
    from auditcast.errors import LoginRequired

    s = settings()
    cache = kube_cache_dir(s) / f"{cluster}.json"
    profile = load_profile(s)
    body: dict[str, Any] = {"cluster": cluster}
    if profile.require_session_mfa:
        body["mfa_code"] = os.environ.get("AUDITCAST_MFA_CODE") or _prompt_code()
    try:
        out = api_call("POST", "/auth/kube", json=body)
    except LoginRequired as e:
        if "MFA" not in e.message:
            raise
        body["mfa_code"] = _prompt_code()
        out = api_call("POST", "/auth/kube", json=body)
    if not out.get("mfa"):  # a per-session MFA credential is never reused from a cache
        write_private(cache, json.dumps({"token": out["token"], "expires": out["expires"]}))
    sys.stdout.write(json.dumps(exec_credential(out["token"], out["expires"])) + "\n")


@kube.command("ls")
@json_option
def ls(as_json: bool) -> None:
    """Clusters your roles allow, with their labels."""
    from auditcast.access.cli_common import api_call
    from auditcast.cli._util import print_json

    rows = api_call("GET", "/kube/clusters")
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(
            "no clusters: your roles allow none (request more with `auditcast request create`)"
        )
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        click.echo(f"{r['name']:<24} {labels}")
