"""The client side of `auditcast login`: get an ID token from the IdP, trade it for an
auditcast session, then fetch and install credentials (SSH certificate, kubeconfig)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import sys
import webbrowser
from datetime import datetime
from typing import Any, Final

import httpx
from aiohttp import web

from auditcast.access.cli_common import error_from_response
from auditcast.access.kubeconfig import auditcast_entries, default_kubeconfig_path, write_kubeconfig
from auditcast.access.oidc import (
    authorization_url,
    discover,
    exchange_code,
    pkce_pair,
    poll_device_flow,
    start_device_flow,
)
from auditcast.access.profile import (
    Profile,
    kube_cache_dir,
    save_profile,
    ssh_dir,
    write_private,
)
from auditcast.errors import AccessError, AuditcastError
from auditcast.settings import Settings

LOGIN_TIMEOUT_S: Final = 300.0
HTTP_TIMEOUT_S: Final = 15.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def api_base(settings: Settings, proxy: str | None) -> str:
    return (proxy or settings.api_url or f"http://{settings.bind_host}:{settings.api_port}").rstrip(
        "/"
    )


async def _api(method: str, url: str, token: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as c:
            r = await c.request(method, url, headers=headers, **kw)
    except httpx.HTTPError as e:
        raise AuditcastError(
            f"cannot reach the auditcast API at {url}: {e}",
            hint="is `auditcast up` running? try --proxy URL",
        ) from None
    if r.status_code >= 400:
        raise error_from_response(r)
    return r.json()


async def browser_login(settings: Settings, cfg: dict[str, Any]) -> tuple[str, str]:
    """Authorization code + PKCE with a loopback redirect (RFC 8252). Returns (id_token, nonce)."""
    meta = await discover(cfg["issuer"])
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        if request.query.get("state") != state:
            return web.Response(
                status=400, text="state mismatch: this is not the login you started"
            )
        if "error" in request.query:
            if not got.done():
                got.set_exception(
                    AccessError(f"login refused by the identity provider: {request.query['error']}")
                )
            return web.Response(status=400, text=f"login failed: {request.query['error']}")
        if not got.done():
            got.set_result(request.query.get("code", ""))
        return web.Response(text="auditcast: you are signed in; you can close this window.")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    url = authorization_url(
        meta, client_id=cfg["client_id"], redirect_uri=redirect_uri, scopes=cfg["scopes"],
        state=state, nonce=nonce, challenge=challenge,
    )  # fmt: skip
    say(f"Open this URL to sign in:\n\n  {url}\n")
    try:
        webbrowser.open(url, new=1)
    except Exception:
        pass
    try:
        code = await asyncio.wait_for(got, LOGIN_TIMEOUT_S)
    except TimeoutError:
        raise AccessError(
            "no sign-in within 5 minutes", hint="run `auditcast login` again"
        ) from None
    finally:
        await runner.cleanup()
    tokens = await exchange_code(
        meta, client_id=cfg["client_id"], code=code, redirect_uri=redirect_uri, verifier=verifier,
        client_secret=settings.oidc_client_secret,
    )  # fmt: skip
    return tokens["id_token"], nonce


async def device_login(cfg: dict[str, Any]) -> tuple[str, None]:
    meta = await discover(cfg["issuer"])
    auth = await start_device_flow(meta, client_id=cfg["client_id"], scopes=cfg["scopes"])
    say(f"On any device, open {auth.verification_uri} and enter the code:  {auth.user_code}")
    if auth.verification_uri_complete:
        say(f"(or open {auth.verification_uri_complete})")
    tokens = await poll_device_flow(meta, auth, client_id=cfg["client_id"])
    return tokens["id_token"], None


def _ensure_ssh_key(settings: Settings) -> str:
    d = ssh_dir(settings)
    key = d / "id_ed25519"
    if not key.exists():
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "auditcast", "-f", str(key)],
            check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return (d / "id_ed25519.pub").read_text().strip()


async def login(
    settings: Settings, *, proxy: str | None, device: bool, request_ids: list[str]
) -> dict[str, Any]:
    base = api_base(settings, proxy)
    cfg = await _api("GET", f"{base}/v1/auth/config")
    if not cfg.get("issuer"):
        raise AuditcastError(
            "the auditcast API has no identity provider configured",
            hint="set AUDITCAST_OIDC_ISSUER where `auditcast api` runs",
        )
    id_token, nonce = await (device_login(cfg) if device else browser_login(settings, cfg))
    session = await _api(
        "POST", f"{base}/v1/auth/login",
        json={"id_token": id_token, "nonce": nonce, "request_ids": request_ids},
    )  # fmt: skip
    token = session["token"]
    clusters = await _api("GET", f"{base}/v1/kube/clusters", token)
    profile = Profile(
        api_url=base, token=token, user=session["user"], roles=session["roles"],
        groups=session["groups"], email=session.get("email"),
        expires=datetime.fromisoformat(session["expires"]), kube_groups=session["kube_groups"],
        logins=session["logins"], require_session_mfa=session["require_session_mfa"],
        access_requests=session.get("access_requests", []), clusters=[c["name"] for c in clusters],
    )  # fmt: skip
    save_profile(settings, profile)
    # tokens cached by the exec plugin carry the previous sign-in's roles
    shutil.rmtree(kube_cache_dir(settings), ignore_errors=True)
    d = ssh_dir(settings)
    write_private(d / "known_hosts", session["known_hosts"] + "\n")
    if profile.logins and not profile.require_session_mfa:
        cert = await _api(
            "POST", f"{base}/v1/auth/ssh", token, json={"public_key": _ensure_ssh_key(settings)}
        )
        write_private(d / "id_ed25519-cert.pub", cert["certificate"] + "\n")
    kubeconfig = default_kubeconfig_path()
    gateway = f"https://{settings.bind_host}:{settings.kube_port}"
    write_kubeconfig(
        kubeconfig,
        auditcast_entries(profile.clusters, gateway=gateway, ca_pem=session["tls_ca"],
                          auditcast_home=settings.home_dir),
    )  # fmt: skip
    return {**profile.model_dump(mode="json", exclude={"token"}), "kubeconfig": str(kubeconfig)}
