"""Sign-in against the real OpenID provider and the real `auditcast api`, from the IdP
login page to kubectl's exec plugin: who gets what, and every token that is refused."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time

import httpx
import jwt
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric import rsa

from auditcast.access.oidc import JWKS_MIN_REFRESH_S
from auditcast.events import decode_event
from auditcast.kafka import consumer_config
from auditcast.topics import EVENTS_RAW, IDENTITIES, topic


async def read_topic(s, name: str, want, timeout: float = 15) -> list:
    c = AIOKafkaConsumer(topic(s, name), **consumer_config(s.kafka, None))
    await c.start()
    got: list = []
    try:
        async with asyncio.timeout(timeout):
            while not want(got):
                for msgs in (await c.getmany(timeout_ms=300)).values():
                    got.extend(msgs)
    except TimeoutError:
        pass
    finally:
        await c.stop()
    return got


def test_contractor_sees_nothing_until_a_reviewer_approves_devrole(access_api) -> None:
    carol = access_api.login("carol")
    assert carol.login_output["roles"] == ["contractor"]
    assert carol.json("kube", "ls") == []
    req = carol.json(
        "request", "create", "--roles", "devrole", "--reason", "fix staging", "--ttl", "20s"
    )
    # carol cannot approve her own request; alice (admins → admin) can
    refused = carol.run("request", "review", req["id"], "--approve", "--reason", "me", check=False)
    assert refused.returncode != 0
    alice = access_api.login("alice")
    alice.run("request", "review", req["id"], "--approve", "--reason", "ok")
    carol2 = access_api.login("carol", "--request", req["id"])
    assert set(carol2.login_output["roles"]) == {"contractor", "devrole"}
    names = sorted(c["name"] for c in carol2.json("kube", "ls"))
    assert names == ["staging-1", "staging-2"]
    # kubeconfig: one context per allowed cluster, user = the exec plugin
    kubeconfig = yaml.safe_load((carol2.home / "kubeconfig").read_text())
    assert sorted(c["name"] for c in kubeconfig["contexts"]) == [
        "auditcast-staging-1",
        "auditcast-staging-2",
    ]
    # the grant ends with the request's TTL: the session expires with it
    status = carol2.json("status")
    left = time.mktime(time.strptime(status["expires"][:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(
        time.gmtime()
    )
    assert 0 < left <= 21
    time.sleep(max(left, 0) + 1)
    expired = carol2.run("kube", "ls", check=False)
    assert expired.returncode != 0 and "expired" in expired.stderr


def test_developer_gets_kube_token_via_kubectl_exec_plugin_and_ssh_certificate(access_api) -> None:
    bob = access_api.login("bob")
    assert [c["name"] for c in bob.json("kube", "ls")] == ["staging-1", "staging-2"]
    assert [n["name"] for n in bob.json("ssh", "ls")] == ["node1"]
    # kubectl itself reads the kubeconfig and runs the exec plugin: capture the token it got
    view = subprocess.run(
        ["kubectl", "config", "view", "--raw", "-o", "json", "--context", "auditcast-staging-1"],
        env=bob.env,
        capture_output=True,
        text=True,
        check=True,
    )
    user = json.loads(view.stdout)["users"]
    exec_cfg = next(u for u in user if u["name"] == "auditcast-staging-1")["user"]["exec"]
    plugin = subprocess.run(
        [exec_cfg["command"], *exec_cfg["args"]],
        env=bob.env,
        capture_output=True,
        text=True,
        check=True,
    )
    cred = json.loads(plugin.stdout)
    assert cred["kind"] == "ExecCredential" and cred["status"]["token"]
    # a gateway without the CA folder verifies it with the keys from /v1/auth/jwks
    keys = httpx.get(f"{access_api.url}/v1/auth/jwks", timeout=10).json()["keys"]
    token = cred["status"]["token"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in keys if k["kid"] == kid))
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience="staging-1")
    assert (claims["sub"], claims["aud"], claims["kube_groups"]) == ("bob", "staging-1", ["devs"])
    # kubectl runs the same plugin for a request (the gateway is not running here)
    run = subprocess.run(
        ["kubectl", "--context", "auditcast-staging-1", "get", "pods", "--request-timeout=3s"],
        env=bob.env,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "connection refused" in run.stderr.lower()
    # an SSH certificate for the dev login, readable by ssh-keygen
    cert = bob.home / "ssh" / "id_ed25519-cert.pub"
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True)
    assert 'Key ID: "bob"' in listing.stdout and "dev" in listing.stdout
    assert (
        (bob.home / "ssh" / "known_hosts").read_text().startswith("@cert-authority * ssh-ed25519")
    )
    # both credentials are bound to the SSO identity on the identities topic
    s = access_api.settings
    records = asyncio.run(read_topic(s, IDENTITIES, lambda got: len(got) >= 3))
    docs = [json.loads(r.value) for r in records]
    kinds = {d["kind"] for d in docs if d["identity"]["user"] == "bob"}
    assert kinds >= {"session", "kube-token", "ssh-cert"}
    assert all(d["identity"]["sso_issuer"] == access_api.idp.issuer for d in docs)
    kube_rec = next(d for d in docs if d["kind"] == "kube-token")
    assert kube_rec["credential_id"] == claims["jti"]  # the token's jti is the record's key
    assert kube_rec["identity"]["roles"] == ["devrole"]
    assert kube_rec["identity"]["groups"] == ["developers"]
    assert kube_rec["identity"]["email"] == "bob@example.com"
    assert kube_rec["expires"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(claims["exp"])))
    events = asyncio.run(read_topic(s, EVENTS_RAW, lambda got: len(got) >= 3))
    types = [decode_event(m.value).type for m in events]
    assert "user.login" in types and types.count("cert.issued") >= 2


def test_kubeconfig_login_keeps_other_entries(access_api) -> None:
    bob = access_api.client("bob")
    bob.home.mkdir(parents=True)
    other = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "mine",
        "clusters": [{"name": "mine", "cluster": {"server": "https://example.invalid"}}],
        "users": [{"name": "mine", "user": {"token": "x"}}],
        "contexts": [{"name": "mine", "context": {"cluster": "mine", "user": "mine"}}],
    }
    (bob.home / "kubeconfig").write_text(yaml.safe_dump(other))
    access_api.login("bob", client=bob)
    plugin = ["kube", "credentials", "--cluster", "staging-1"]
    first = json.loads(bob.run(*plugin).stdout)["status"]["token"]
    assert json.loads(bob.run(*plugin).stdout)["status"]["token"] == first  # from the cache
    access_api.login("bob", client=bob)  # logging in again replaces only our own entries
    # ... and drops the cached tokens, which carry the previous sign-in's roles
    assert json.loads(bob.run(*plugin).stdout)["status"]["token"] != first
    doc = yaml.safe_load((bob.home / "kubeconfig").read_text())
    names = [c["name"] for c in doc["contexts"]]
    assert names == ["mine", "auditcast-staging-1", "auditcast-staging-2"]
    assert doc["current-context"] == "mine"  # the user's choice is kept
    assert [u for u in doc["users"] if u["name"] == "mine"] == other["users"]


def _id_token(api, key, **over) -> str:
    now = int(time.time())
    claims = {
        "iss": api.idp.issuer,
        "aud": "auditcast",
        "sub": "bob",
        "iat": now,
        "exp": now + 300,
        "preferred_username": "bob",
        "groups": ["admins"],
    }
    claims.update(over)
    headers = {"kid": over.pop("kid", "forged")}
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256", headers=headers
    )


def test_forged_and_invalid_id_tokens_are_refused_with_a_reason(access_api) -> None:
    own_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp_keys = json.loads(access_api.idp.keys_file.read_text())["keys"]
    idp_key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(idp_keys[0]))
    kid = idp_keys[0]["kid"]
    now = int(time.time())
    cases = {
        "alg none": (
            jwt.encode(
                {
                    "iss": access_api.idp.issuer,
                    "aud": "auditcast",
                    "sub": "bob",
                    "iat": now,
                    "exp": now + 60,
                },
                None,
                algorithm="none",
            ),
            "'none'",
        ),
        "wrong key": (_id_token(access_api, own_key, kid=kid), "signature is invalid"),
        "unknown kid": (_id_token(access_api, own_key), "does not publish"),
        "wrong issuer": (
            _id_token(access_api, idp_key, kid=kid, iss="https://evil.example"),
            "another issuer",
        ),
        "wrong audience": (
            _id_token(access_api, idp_key, kid=kid, aud="someone-else"),
            "another client",
        ),
        "expired": (
            _id_token(access_api, idp_key, kid=kid, exp=now - 3600, iat=now - 7200),
            "expired",
        ),
    }
    good = _id_token(access_api, idp_key, kid=kid)
    h, p, sig = good.split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=="))
    body["groups"] = ["admins", "root"]
    tampered = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    cases["tampered"] = (f"{h}.{tampered}.{sig}", "signature is invalid")
    for name, (token, says) in cases.items():
        r = httpx.post(f"{access_api.url}/v1/auth/login", json={"id_token": token}, timeout=10)
        assert r.status_code == 401, (name, r.text)
        assert says in r.json()["error"] and "auditcast login" in r.json()["hint"], (name, r.text)
    # the genuine token signed with the IdP's key is accepted: the checks above are real
    ok = httpx.post(f"{access_api.url}/v1/auth/login", json={"id_token": good}, timeout=10)
    assert ok.status_code == 200 and ok.json()["user"] == "bob"
    # ... once: the same ID token presented again is a replay
    again = httpx.post(f"{access_api.url}/v1/auth/login", json={"id_token": good}, timeout=10)
    assert again.status_code == 401 and "already used" in again.json()["error"]
    cases["replayed"] = (good, "already used")
    events = asyncio.run(
        read_topic(access_api.settings, EVENTS_RAW, lambda g: len(g) >= len(cases) + 1)
    )
    failed = [decode_event(m.value) for m in events if decode_event(m.value).type == "auth.failed"]
    assert len(failed) == len(cases)
    logins = [decode_event(m.value) for m in events if decode_event(m.value).type == "user.login"]
    assert len(logins) == 1  # none of the refused tokens created a session


def test_idp_key_rotation_is_followed(access_api) -> None:
    access_api.login("bob")  # the API now caches the IdP's key set
    cached_at = time.monotonic()
    old_kids = [k["kid"] for k in json.loads(access_api.idp.keys_file.read_text())["keys"]]
    access_api.idp.rotate_key()
    assert json.loads(access_api.idp.keys_file.read_text())["keys"][0]["kid"] not in old_kids
    # an unknown kid refetches the key set at most every JWKS_MIN_REFRESH_S
    time.sleep(max(0.0, JWKS_MIN_REFRESH_S - (time.monotonic() - cached_at)))
    bob = access_api.login("bob")  # signed with the new key: found by the refetch
    assert bob.login_output["user"] == "bob"


def test_locked_user_cannot_sign_in_or_get_credentials(access_api) -> None:
    alice = access_api.login("alice")
    bob = access_api.login("bob")
    alice.run("lock", "--user", "bob", "--message", "incident 42", "--ttl", "5m")
    refused = bob.run("kube", "ls", check=False)
    assert refused.returncode != 0 and "incident 42" in refused.stderr
    time.sleep(0.2)
    with pytest.raises(AssertionError, match="incident 42"):
        access_api.login("bob")


def test_device_flow_login_for_a_machine_without_a_browser(access_api) -> None:
    dave = access_api.login("dave", device=True)
    assert dave.login_output["roles"] == ["auditor"]
    assert dave.json("kube", "ls") == [] and dave.json("ssh", "ls") == []
    who = httpx.get(
        f"{access_api.url}/v1/auth/whoami",
        headers={"Authorization": f"Bearer {access_api.token(dave)}"},
        timeout=10,
    ).json()
    assert (who["user"], who["email"], who["groups"]) == ("dave", "dave@example.com", ["auditors"])
    assert who["sso_issuer"] == access_api.idp.issuer
    # after logout the CLI has no session left, and says how to get one
    dave.run("logout")
    gone = dave.run("status", check=False)
    assert gone.returncode != 0 and "auditcast login" in gone.stderr
    anonymous = httpx.get(f"{access_api.url}/v1/auth/whoami", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"].startswith("not signed in")


def test_no_credential_without_its_identity_record_when_the_broker_is_away(idp, tmp_path) -> None:
    """The identities record is what ties a credential to the SSO identity: when it
    cannot be written, sign-in fails (503, saying so) instead of issuing an unbound one."""
    from auditcast.broker import free_port
    from auditcast.settings import Settings

    from .conftest import running_api

    dead = Settings(home=tmp_path / "server", kafka=f"127.0.0.1:{free_port()}", topic_prefix="x.")
    with running_api(tmp_path, dead, idp) as api:
        with pytest.raises(AssertionError) as refused:
            api.login("bob")
        said = str(refused.value)
        assert "Kafka broker at" in said and "is unreachable" in said
        assert "AUDITCAST_KAFKA" in said  # the hint
        assert "returncode: 3" in said  # BrokerError's exit code
        assert not list(tmp_path.glob("client-bob-*/profile.json"))
