"""ID token verification (access.oidc) against a JWKS served over real HTTP: every way a
token is refused, and key rotation with a bounded number of refetches.

The JWKS endpoint is a tiny stdlib HTTP server in this file (a test double of an IdP's
`jwks_uri`: it serves the RFC 7517 JSON and counts fetches); the end-to-end tests in
test_login.py use the real oidc-provider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auditcast.access.idp_runner import new_signing_jwk
from auditcast.access.oidc import (
    IDTokenVerifier,
    ProviderMetadata,
    authorization_url,
    pkce_pair,
)
from auditcast.errors import InvalidToken

ISSUER = "http://idp.test"
CLIENT = "auditcast"


class JWKSServer:
    """Serves {"keys": [public JWKs]} at /jwks and counts the fetches."""

    def __init__(self) -> None:
        self.private: list[dict[str, Any]] = [new_signing_jwk()]
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                public = [
                    {k: v for k, v in jwk.items() if k in ("kty", "n", "e", "kid", "use", "alg")}
                    for jwk in outer.private
                ]
                body = json.dumps({"keys": public}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def key(self, i: int = 0) -> tuple[Any, str]:
        jwk = self.private[i]
        return jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk)), jwk["kid"]

    def rotate(self) -> None:
        self.private.insert(0, new_signing_jwk())


@pytest.fixture
def jwks() -> Iterator[JWKSServer]:
    server = JWKSServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def verifier(jwks: JWKSServer) -> IDTokenVerifier:
    return IDTokenVerifier(ISSUER, CLIENT, jwks.url)


def id_token(key: Any, kid: str | None, alg: str = "RS256", **over: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": CLIENT, "sub": "bob", "iat": now, "exp": now + 300,
              "nonce": "n-1", "groups": ["developers"]}  # fmt: skip
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def test_genuine_id_token_yields_its_claims(jwks, verifier) -> None:
    key, kid = jwks.key()
    claims = verifier.verify(id_token(key, kid), nonce="n-1")
    assert (claims["sub"], claims["groups"]) == ("bob", ["developers"])


@pytest.mark.parametrize(
    ("over", "says"),
    [
        ({"iss": "https://evil.example"}, "another issuer"),
        ({"aud": "other-client"}, "another client"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"exp": None}, "exp"),
    ],
)
def test_claims_that_do_not_fit_are_refused(jwks, verifier, over, says) -> None:
    key, kid = jwks.key()
    with pytest.raises(InvalidToken, match=says):
        verifier.verify(id_token(key, kid, **over), nonce="n-1")


def test_nonce_of_another_login_is_refused(jwks, verifier) -> None:
    key, kid = jwks.key()
    with pytest.raises(InvalidToken, match="nonce does not match"):
        verifier.verify(id_token(key, kid), nonce="n-2")


def test_unsigned_and_hmac_with_public_key_are_refused(jwks, verifier) -> None:
    key, kid = jwks.key()
    with pytest.raises(InvalidToken, match="'none' is not accepted"):
        verifier.verify(id_token(None, kid, alg="none"))
    # the classic confusion: HS256 "signed" with the IdP's public key, which anyone has
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    body = {"iss": ISSUER, "aud": CLIENT, "sub": "admin", "exp": 2**40, "iat": 0}

    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    signing_input = f"{b64(header)}.{b64(body)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(InvalidToken, match="'HS256' is not accepted"):
        verifier.verify(forged)


def test_wrong_key_and_tampered_payload_are_refused(jwks, verifier) -> None:
    key, kid = jwks.key()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidToken, match="signature is invalid"):
        verifier.verify(id_token(other, kid))
    head, body, sig = id_token(key, kid).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["groups"] = ["admins"]
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="forged or tampered"):
        verifier.verify(f"{head}.{tampered}.{sig}")
    with pytest.raises(InvalidToken, match="not a JWT"):
        verifier.verify("garbage")


def test_rotated_key_verifies_after_one_jwks_refetch(jwks) -> None:
    verifier = IDTokenVerifier(ISSUER, CLIENT, jwks.url, min_refresh_s=0.2)
    old_key, old_kid = jwks.key()
    verifier.verify(id_token(old_key, old_kid))
    assert jwks.fetches == 1
    jwks.rotate()
    time.sleep(0.25)
    new_key, new_kid = jwks.key(0)
    assert verifier.verify(id_token(new_key, new_kid))["sub"] == "bob"
    assert jwks.fetches == 2
    # the old key is still published during the grace period: its tokens verify from cache
    verifier.verify(id_token(old_key, old_kid))
    assert jwks.fetches == 2


def test_flood_of_unknown_kids_costs_the_idp_one_fetch_per_interval(jwks) -> None:
    verifier = IDTokenVerifier(ISSUER, CLIENT, jwks.url, min_refresh_s=60)
    key, kid = jwks.key()
    verifier.verify(id_token(key, kid))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(50):
        with pytest.raises(InvalidToken, match="does not publish"):
            verifier.verify(id_token(other, f"forged-{i}"))
    assert jwks.fetches == 1  # the first fetch is younger than min_refresh_s: none more


def test_pkce_challenge_is_s256_of_the_verifier_and_in_the_auth_url() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128  # RFC 7636 §4.1
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    meta = ProviderMetadata(ISSUER, f"{ISSUER}/auth", f"{ISSUER}/token", f"{ISSUER}/jwks")
    url = authorization_url(
        meta, client_id=CLIENT, redirect_uri="http://127.0.0.1:5555/callback",
        scopes="openid groups", state="s", nonce="n", challenge=challenge,
    )  # fmt: skip
    q = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert q["code_challenge"] == challenge and q["code_challenge_method"] == "S256"
    assert (q["response_type"], q["nonce"], q["state"]) == ("code", "n", "s")
    assert q["redirect_uri"] == "http://127.0.0.1:5555/callback"
