"""The gateway relays exec WebSockets frame for frame (collectors/kube/wsrelay.py).

A raw WebSocket client written here (TLS socket, RFC 6455 handshake and frames by
hand) talks to the real gateway in front of the API-server test double, so that what
no well-behaved client library sends can be sent: fragments, pings, unmasked frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from auditcast.access.lock_authority import LockAuthority
from auditcast.access.lock_model import LockTargets, new_lock
from auditcast.collectors.kube.gateway import KubeGateway
from auditcast.collectors.kube.upstreams import UpstreamCluster
from auditcast.collectors.kube.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameScanner,
    accept_key,
    encode_frame,
    new_key,
)
from auditcast.events import decode_frames
from auditcast.settings import Settings
from auditcast.topics import EVENTS_RAW, SESSION_FRAMES
from tests.kube.conftest import (
    CollectingSink,
    KubeEnv,
    TokenMint,
    running_kube_env,
)
from tests.kube.test_exec_recording import deliver_recordings, read_topic, record_through_spool
from tests.kubeapi.pki import TestCA

PATH = "/cluster/dev-cluster/api/v1/namespaces/dev/pods/web-0/exec"


class RawWs:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.scanner = FrameScanner(masked=False, max_message=1 << 24)
        self.inbox: list[tuple[int, bytes]] = []

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def next(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next message or control frame from the gateway; (-1, b"") at EOF."""
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return -1, b""
            self.inbox += [(m.opcode, m.payload) for m in self.scanner.feed(data)[1]]
        return self.inbox.pop(0)

    async def until(self, opcode: int, timeout: float = 10) -> list[tuple[int, bytes]]:
        """Everything up to and including the first `opcode` (or EOF)."""
        seen = []
        while True:
            op, payload = await self.next(timeout)
            seen.append((op, payload))
            if op in (opcode, -1):
                return seen


async def open_ws(env: KubeEnv, query: str, **headers: str) -> tuple[int, bytes, RawWs]:
    """Upgrade through the env's gateway as alice; (status, head and any body, the
    connection)."""
    token = env.mint.mint("alice")
    return await open_ws_at(env.gateway.gateway.port, env.ca_path, token, query, **headers)


async def open_ws_at(
    port: int, ca: Path, token: str, query: str, **headers: str
) -> tuple[int, bytes, RawWs]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    key = new_key()
    fields = {
        "Host": "127.0.0.1",
        "Authorization": f"Bearer {token}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "v5.channel.k8s.io",
        **headers,
    }
    head = f"GET {PATH}?{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    writer.write((head + "\r\n").encode())
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(answer.split(b" ", 2)[1])
    if status == 101:
        assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in answer
    else:
        answer += await asyncio.wait_for(reader.read(65536), 10)
    return status, answer, RawWs(reader, writer)


def stdin(data: bytes, *, fin: bool = True, opcode: int = OP_BINARY) -> bytes:
    raw = bytearray(encode_frame(opcode, data, mask=True))
    if not fin:
        raw[0] &= 0x7F
    return bytes(raw)


CAT = "command=cat&stdin=true&stdout=true&stderr=true"


def test_a_bad_websocket_handshake_is_refused_before_the_cluster(kube_env: KubeEnv) -> None:
    status, answer, _ = asyncio.run(open_ws(kube_env, CAT, **{"Sec-WebSocket-Version": "8"}))
    assert status == 400
    doc = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "unsupported Sec-WebSocket-Version '8'" in doc["message"]
    assert kube_env.upstream_requests() == 0
    refused = kube_env.sink.wait_for("kube.request", lambda e: e.response_code == 400)  # type: ignore[attr-defined]
    assert refused and "Sec-WebSocket-Version" in refused[0].error  # type: ignore[attr-defined]


def test_pings_fragments_and_close_pass_between_kubectl_and_the_cluster(
    kube_env: KubeEnv,
) -> None:
    async def session() -> list[tuple[int, bytes]]:
        status, _, ws = await open_ws(kube_env, CAT)
        assert status == 101
        ws.send(encode_frame(OP_PING, b"still there?", mask=True))
        pong = await ws.until(OP_PONG)  # answered by the cluster, through the gateway
        # one stdin message in three fragments, a ping between two of them
        ws.send(stdin(b"\x00hello ", fin=False))
        ws.send(stdin(b"fragmented ", fin=False, opcode=OP_CONTINUATION))
        ws.send(encode_frame(OP_PING, b"mid-message", mask=True))
        ws.send(stdin(b"world\n", opcode=OP_CONTINUATION))
        echoed, seen = b"", []
        while b"world\n" not in echoed:
            op, payload = await ws.next()
            assert op != -1
            seen.append((op, payload))
            if op == OP_BINARY and payload[:1] == b"\x01":
                echoed += payload[1:]
        ws.send(stdin(b"\xff\x00"))  # v5: close stdin, cat ends
        rest = await ws.until(OP_CLOSE)
        ws.send(encode_frame(OP_CLOSE, rest[-1][1][:2], mask=True))
        return pong + seen + [(OP_BINARY, b"\x01" + echoed)] + rest

    got = asyncio.run(asyncio.wait_for(session(), 30))
    assert (OP_PONG, b"still there?") in got
    assert (OP_BINARY, b"\x01hello fragmented world\n") in got
    assert (OP_PONG, b"mid-message") in got
    statuses = [orjson.loads(p[1:]) for op, p in got if op == OP_BINARY and p[:1] == b"\x03"]
    assert statuses and statuses[-1]["status"] == "Success"
    assert got[-1][0] == OP_CLOSE
    ends = kube_env.sink.wait_for("kube.request", lambda e: getattr(e, "phase", "") == "end")
    assert ends and ends[0].exit_code == 0  # type: ignore[attr-defined]
    assert ends[0].bytes_in == len(b"\x00hello fragmented world\n") + 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "code", "error"),
    [
        (encode_frame(OP_BINARY, b"\x00echo hi\n", mask=False), 1002, "not masked"),
        (b"\x83\x80abcd", 1002, "reserved opcode 0x3"),
        (stdin(b"\x04not json"), 1007, 'resize payload is not {"Width": N, "Height": N}'),
    ],
    ids=["unmasked", "reserved-opcode", "bad-resize"],
)
def test_a_broken_client_frame_gets_a_status_and_close_and_never_reaches_the_cluster(
    kube_env: KubeEnv, raw: bytes, code: int, error: str
) -> None:
    async def session() -> list[tuple[int, bytes]]:
        status, _, ws = await open_ws(kube_env, CAT)
        assert status == 101
        ws.send(stdin(b"\x00first\n") + raw + stdin(b"\x00after\n"))
        return await ws.until(OP_CLOSE)

    got = asyncio.run(asyncio.wait_for(session(), 30))
    close = got[-1]
    assert close[0] == OP_CLOSE and int.from_bytes(close[1][:2], "big") == code
    assert error in close[1][2:].decode()
    statuses = [orjson.loads(p[1:]) for op, p in got if op == OP_BINARY and p[:1] == b"\x03"]
    assert any(error in s["message"] for s in statuses), statuses
    output = b"".join(p[1:] for op, p in got if op == OP_BINARY and p[:1] == b"\x01")
    assert b"after" not in output  # nothing after the broken frame was passed on
    ends = kube_env.sink.wait_for("kube.request", lambda e: getattr(e, "phase", "") == "end")
    assert ends and error in ends[0].error  # type: ignore[attr-defined]


def test_a_lock_during_a_flood_of_output_closes_between_whole_frames(
    kube_env_with_locks: KubeEnv,
) -> None:
    """`yes` floods stdout in 64 KiB messages; the lock's Status and close must come
    after the frame in flight ends (the client's own frame parser would fail on a cut
    frame), and the stream must end."""
    env = kube_env_with_locks
    assert env.settings is not None
    authority = LockAuthority(env.settings)
    env.gateway.call(authority.start())

    async def session() -> tuple[int, list[tuple[int, bytes]]]:
        status, _, ws = await open_ws(env, "command=yes&stdout=true")
        assert status == 101
        got, received = [], 0
        while received < 4 << 20:  # a few MB in flight before the lock
            op, payload = await ws.next()
            assert op == OP_BINARY
            received += len(payload)
        lock = new_lock(LockTargets(user="alice"), ttl=timedelta(minutes=5), message="INC-7")
        assert await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(authority.create(lock), env.gateway.loop)
        )
        while True:
            op, payload = await ws.next(timeout=10)  # FrameError here: a cut frame
            received += len(payload)
            if op != OP_BINARY or payload[:1] != b"\x01":
                got.append((op, payload))
            if op in (OP_CLOSE, -1):
                return received, got

    try:
        _, got = asyncio.run(asyncio.wait_for(session(), 60))
    finally:
        env.gateway.call(authority.stop())
    status_frames = [orjson.loads(p[1:]) for op, p in got if op == OP_BINARY]
    assert status_frames and "access locked by" in status_frames[-1]["message"]
    assert "INC-7" in status_frames[-1]["message"]
    assert got[-1][0] == OP_CLOSE and int.from_bytes(got[-1][1][:2], "big") == 1008


@pytest.mark.parametrize(
    "protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"]
)
def test_every_channel_subprotocol_is_recorded_decoded(
    tmp_path: Path, make_settings: Callable[..., Settings], protocol: str
) -> None:
    """The tap streams binary stdout/stderr into the recording piece by piece and reads
    base64 (text) messages whole: either way the recording holds the decoded bytes,
    and the exit code comes from the error channel."""
    settings = make_settings()
    big = 150_000  # more than one of the cluster's messages, cut across reads
    script = f"head -c {big} /dev/zero | tr -c o o; printf err >&2; exit 4"
    query = "command=sh&command=-c&command=" + quote(script) + "&stdout=true&stderr=true"
    with running_kube_env(tmp_path) as env:
        spool, recorders = record_through_spool(env, settings)

        async def session() -> list[tuple[int, bytes]]:
            status, _, ws = await open_ws(env, query, **{"Sec-WebSocket-Protocol": protocol})
            assert status == 101
            got = await ws.until(OP_CLOSE)
            ws.send(encode_frame(OP_CLOSE, got[-1][1][:2], mask=True))
            return got

        got = asyncio.run(asyncio.wait_for(session(), 30))
        assert {op for op, _ in got[:-1]} == ({OP_TEXT} if "base64" in protocol else {OP_BINARY})
        deliver_recordings(env, spool, recorders)

    events = [orjson.loads(v) for v in asyncio.run(read_topic(
        settings, EVENTS_RAW, lambda got: any(b"session.end" in v for v in got)
    ))]  # fmt: skip
    end = next(e for e in events if e["type"] == "session.end")
    assert end["exit_code"] == 4 and end["bytes_out"] == big + 3
    raw = asyncio.run(read_topic(settings, SESSION_FRAMES, lambda got: any(
        f.kind == "x" for v in got for f in decode_frames(v)
    )))  # fmt: skip
    frames = sorted((f for v in raw for f in decode_frames(v)), key=lambda f: f.seq)
    output = b"".join(f.data for f in frames if f.kind == "o")
    assert sorted([output.replace(b"err", b""), output.replace(b"o" * big, b"")]) == [
        b"err",
        b"o" * big,
    ]


def test_a_cluster_that_breaks_the_websocket_protocol_ends_the_stream_with_the_reason(
    tmp_path: Path,
) -> None:
    """Not the API-server double: a TLS server here that answers the exec upgrade
    correctly (RFC 6455 handshake) and then sends a *masked* frame, which a server may
    never send. The gateway passes nothing of it on, tells the cluster 1002, closes
    kubectl's connection and records why."""
    ca = TestCA.create("bad-cluster-ca")
    ca_path, crt, key = ca.write(tmp_path / "bad-pki", "bad-cluster")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(crt, key)
    heard: list[bytes] = []

    async def bad_cluster(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n"
                "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
            ).encode()
            + encode_frame(OP_BINARY, b"\x01fine", mask=False)
            + encode_frame(OP_BINARY, b"\x01masked!", mask=True)
        )
        heard.append(await reader.read(1024))
        writer.close()

    mint = TokenMint(tmp_path / "access-home")
    sink = CollectingSink()
    gw_ca = TestCA.create("gw-ca")
    gw_ca_path, gw_crt, gw_key = gw_ca.write(tmp_path / "gw-pki", "kube-gateway")
    gw_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    gw_tls.load_cert_chain(gw_crt, gw_key)

    async def scenario(port: int) -> list[tuple[int, bytes]]:
        server = await asyncio.start_server(bad_cluster, "127.0.0.1", 0, ssl=server_tls)
        cluster = UpstreamCluster(
            "dev-cluster",
            f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}",
            ca=ca_path,
            token="t",
        )
        gateway = KubeGateway({"dev-cluster": cluster}, mint.verify, sink)
        await gateway.start("127.0.0.1", 0, gw_tls)
        try:
            status, _, ws = await open_ws_at(gateway.port, gw_ca_path, mint.mint("alice"), CAT)
            assert status == 101
            got = []
            while (msg := await ws.next())[0] != -1:
                got.append(msg)
            return got
        finally:
            await gateway.stop()
            server.close()

    got = asyncio.run(asyncio.wait_for(scenario(0), 30))
    # what came before the masked frame reached kubectl, then a Status and a close 1002
    assert got[0] == (OP_BINARY, b"\x01fine"), got
    assert "a server frame is masked" in orjson.loads(got[1][1][1:])["message"]
    assert got[2][0] == OP_CLOSE and int.from_bytes(got[2][1][:2], "big") == 1002
    assert len(got) == 3  # and nothing of the masked frame
    assert heard and heard[0][:1] == b"\x88"  # a close frame went to the cluster...
    _, messages = FrameScanner(masked=True, max_message=1024).feed(heard[0])
    assert int.from_bytes(messages[0].payload[:2], "big") == 1002  # ...protocol error
    ends = [e for e in sink.events if getattr(e, "phase", "") == "end"]
    assert ends and "malformed frame from upstream: a server frame is masked" in ends[0].error  # type: ignore[attr-defined]


def test_kubectl_stdin_of_8_mb_reaches_the_pod_byte_for_byte(kube_env: KubeEnv) -> None:
    """Real kubectl: its masked stdin frames are passed on as it wrote them (whole
    frames, however the bytes are cut), and the pod sees exactly the input."""
    env = kube_env.kubeconfig(kube_env.mint.mint("alice"))
    data = os.urandom(8 * 1024 * 1024)
    r = subprocess.run(
        ["kubectl", "exec", "-i", "-n", "dev", "web-0", "--", "sh", "-c", "md5sum"],
        input=data,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
    ends = kube_env.sink.wait_for("kube.request", lambda e: getattr(e, "phase", "") == "end")
    assert ends and ends[0].bytes_in >= len(data)  # type: ignore[attr-defined]
