"""OpenID Connect: discovery, authorization code + PKCE, device flow, ID token checks.

The protocol helpers (`pkce_pair`, `authorization_url`) are pure; the HTTP calls use
httpx. `IDTokenVerifier` checks an ID token the way the spec requires: signature by a
key in the issuer's JWKS (refetched when an unknown `kid` appears: key rotation),
`alg` from an allow list (never `none`, never HMAC), `iss`, `aud`, `exp`, `nbf`, `iat`,
and the `nonce` the client sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import jwt

from auditcast.errors import AccessError, ConfigError, InvalidToken

# Asymmetric algorithms only: an HMAC "signature" keyed with a public key proves nothing.
ALLOWED_ALGORITHMS: Final = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
HTTP_TIMEOUT_S: Final = 10.0
# Refetch the JWKS for an unknown kid at most this often: a flood of forged kids must not
# become a flood of requests to the IdP, yet a real rotation is picked up within seconds
# (the IdP publishes the new key before signing with it, so one refetch finds it).
JWKS_MIN_REFRESH_S: Final = 5.0
LEEWAY_S: Final = 30
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    device_authorization_endpoint: str | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ProviderMetadata:
        try:
            return cls(
                issuer=doc["issuer"],
                authorization_endpoint=doc["authorization_endpoint"],
                token_endpoint=doc["token_endpoint"],
                jwks_uri=doc["jwks_uri"],
                device_authorization_endpoint=doc.get("device_authorization_endpoint"),
            )
        except KeyError as e:
            raise ConfigError(f"OpenID discovery document lacks {e.args[0]}") from None


async def discover(issuer: str) -> ProviderMetadata:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as c:
            r = await c.get(url)
            r.raise_for_status()
            meta = ProviderMetadata.from_doc(r.json())
    except (httpx.HTTPError, ValueError) as e:
        raise ConfigError(
            f"cannot read the OpenID configuration of {issuer}: {e}",
            hint="check AUDITCAST_OIDC_ISSUER and that the identity provider is up",
        ) from None
    if meta.issuer.rstrip("/") != issuer.rstrip("/"):
        raise ConfigError(f"issuer mismatch: configured {issuer}, provider says {meta.issuer}")
    return meta


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(
    meta: ProviderMetadata, *, client_id: str, redirect_uri: str, scopes: str,
    state: str, nonce: str, challenge: str,
) -> str:  # fmt: skip
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scopes,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{meta.authorization_endpoint}?{urlencode(query)}"


async def _token_request(meta: ProviderMetadata, form: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as c:
        r = await c.post(meta.token_endpoint, data=form)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        err = body.get("error", f"HTTP {r.status_code}")
        raise AccessError(
            f"the identity provider refused: {err} {body.get('error_description', '')}".strip()
        )
    return dict(body)


async def exchange_code(
    meta: ProviderMetadata, *, client_id: str, code: str, redirect_uri: str, verifier: str,
    client_secret: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    if client_secret:
        form["client_secret"] = client_secret
    return await _token_request(meta, form)


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: int
    expires_in: int


async def start_device_flow(
    meta: ProviderMetadata, *, client_id: str, scopes: str
) -> DeviceAuthorization:
    if not meta.device_authorization_endpoint:
        raise ConfigError("the identity provider does not offer the device flow")
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as c:
        r = await c.post(
            meta.device_authorization_endpoint, data={"client_id": client_id, "scope": scopes}
        )
    if r.status_code != 200:
        raise AccessError(f"device authorization refused: HTTP {r.status_code} {r.text[:200]}")
    d = r.json()
    return DeviceAuthorization(
        device_code=d["device_code"], user_code=d["user_code"],
        verification_uri=d["verification_uri"],
        verification_uri_complete=d.get("verification_uri_complete"),
        interval=int(d.get("interval", 5)), expires_in=int(d.get("expires_in", 600)),
    )  # fmt: skip


async def poll_device_flow(
    meta: ProviderMetadata, auth: DeviceAuthorization, *, client_id: str
) -> dict[str, Any]:
    """Poll the token endpoint until the user approves, denies, or the code expires."""
    interval = auth.interval
    deadline = time.monotonic() + auth.expires_in
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        try:
            return await _token_request(
                meta,
                {
                    "grant_type": DEVICE_GRANT,
                    "device_code": auth.device_code,
                    "client_id": client_id,
                },
            )
        except AccessError as e:
            if "authorization_pending" in e.message:
                continue
            if "slow_down" in e.message:
                interval += 5
                continue
            raise
    raise AccessError(
        "the device code expired before it was approved",
        hint="run `auditcast login --device` again",
    )


class IDTokenVerifier:
    """Verifies ID tokens of one issuer for one client; JWKS cached, refetched on rotation.

    A token whose `kid` is not in the cached key set triggers one refetch (the IdP rotated
    its keys), but at most every `min_refresh_s`: a flood of forged kids costs the IdP
    one request per interval, and is refused from the cache in between.
    """

    def __init__(
        self, issuer: str, client_id: str, jwks_uri: str,
        *, min_refresh_s: float = JWKS_MIN_REFRESH_S,
    ) -> None:  # fmt: skip
        self.issuer, self.client_id = issuer, client_id
        self.min_refresh_s = min_refresh_s
        self._jwks = jwt.PyJWKClient(
            jwks_uri, cache_keys=False, cache_jwk_set=True, lifespan=3600,
            timeout=int(HTTP_TIMEOUT_S),
        )  # fmt: skip
        self._last_refresh = float("-inf")
        self.refreshes = 0  # JWKS fetches so far (observable for tests and metrics)

    def _fetch(self, *, refresh: bool) -> list[jwt.PyJWK]:
        try:
            if refresh or not self._has_cached_set():
                self._last_refresh = time.monotonic()
                self.refreshes += 1
                return self._jwks.get_signing_keys(refresh=True)
            return self._jwks.get_signing_keys()
        except jwt.PyJWKClientError as e:
            raise InvalidToken(f"cannot fetch the identity provider's keys: {e}") from None

    def _has_cached_set(self) -> bool:
        cache = self._jwks.jwk_set_cache
        return cache is not None and cache.get() is not None

    def _key(self, kid: str | None) -> Any:
        keys = self._fetch(refresh=False)
        if kid is None:
            if len(keys) != 1:
                raise InvalidToken("ID token has no key id and the provider has several keys")
            return keys[0].key
        found = next((k for k in keys if k.key_id == kid), None)
        if found is None and time.monotonic() - self._last_refresh >= self.min_refresh_s:
            found = next((k for k in self._fetch(refresh=True) if k.key_id == kid), None)
        if found is None:
            raise InvalidToken(
                "ID token was signed with a key the identity provider does not publish"
            )
        return found.key

    def verify(self, id_token: str, *, nonce: str | None = None) -> dict[str, Any]:
        """The token's claims, or InvalidToken saying precisely why not. Blocking (JWKS
        fetch): call it from a thread on an event loop."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise InvalidToken("ID token is malformed (not a JWT)") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken(f"ID token algorithm {alg!r} is not accepted")
        key = self._key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=[alg], audience=self.client_id, issuer=self.issuer,
                leeway=LEEWAY_S, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise InvalidToken("ID token expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(
                f"ID token was issued for another client (audience is not {self.client_id})"
            ) from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(
                f"ID token was issued by another issuer (expected {self.issuer})"
            ) from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("ID token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("ID token signature is invalid (forged or tampered)") from None
        except jwt.PyJWTError as e:
            raise InvalidToken(f"ID token is invalid: {e}") from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise InvalidToken("ID token nonce does not match this login (replayed token?)")
        return claims
