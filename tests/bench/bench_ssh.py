"""SSH gateway benchmark: what the gateway adds between an SSH client and a node's sshd.

Processes: a real Debian `sshd` node, the gateway (`start_service`: certificate auth,
policy, lock view, recording through the real spool to the embedded broker) and this
client (asyncssh for both paths, so the client's own cost cancels out). Measured in the
same run against the same sshd:

1. keystroke echo round-trip in a PTY (one byte out, its echo back): p50/p99 direct vs
   through the gateway; the added latency is the difference.
2. bulk output: `head -c 200M /dev/zero` as an exec command, MB/s direct vs gateway
   (the gateway records all of it, as it does for every `ssh host CMD`).
3. session setup: connect, authenticate, run `true`, close; median direct vs gateway.
4. lock latency: a lock on the user is published to the `locks` topic while a shell is
   open; time until the notice reaches the client (p50/p99).

`python -m tests.bench.bench_ssh` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncssh

from tests.bench import figure, target

N_ECHO = 400
BULK_MB = 200
N_SETUP = 20
N_LOCK = 30
ROUNDS = 3
ROLES = {"bench": {"logins": ["root"], "node_labels": {"*": ["*"]}}}


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(s[len(s) // 2] * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
    }


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True)


def user_cert(work: Path, user: str, ca: Path) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    key = work / f"id_{user}"
    keygen("-t", "ed25519", "-N", "", "-f", str(key))
    keygen(
        "-s", str(ca), "-I", user, "-n", "root", "-V", "-5m:+2h",
        "-O", f"extension:auditcast-credential@auditcast=cred-{user}",
        "-O", "extension:auditcast-roles@auditcast=bench", f"{key}.pub",
    )  # fmt: skip
    return asyncssh.read_private_key(key), asyncssh.read_certificate(f"{key}-cert.pub")


# -- the gateway process ---------------------------------------------------------------
async def serve_gateway(settings_json: str, node_port: int) -> None:
    from auditcast.collectors.ssh.policy import Node
    from auditcast.collectors.ssh.service import load_keys, start_service
    from auditcast.collectors.ssh.wiring import StaticNodes
    from auditcast.settings import Settings

    settings = Settings(**json.loads(settings_json))
    nodes = StaticNodes([Node("node1", "127.0.0.1", node_port, {"env": "bench"})])
    svc = await start_service(
        settings,
        nodes,
        ROLES,
        host="127.0.0.1",
        port=0,
        keys=load_keys(settings, ("127.0.0.1",)),
    )
    print(json.dumps({"port": svc.port}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await svc.stop()


# -- the client ------------------------------------------------------------------------
class Target:
    def __init__(self, port: int, username: str, ident: Any, known_hosts: str) -> None:
        self.port, self.username, self.ident, self.known_hosts = port, username, ident, known_hosts

    def connect(self) -> Any:
        return asyncssh.connect(
            "127.0.0.1",
            self.port,
            username=self.username,
            client_keys=[self.ident],
            known_hosts=asyncssh.import_known_hosts(self.known_hosts),
            agent_path=None,
        )


async def echo_rtt(t: Target) -> list[float]:
    async with t.connect() as conn:
        proc = await conn.create_process("cat", term_type="xterm", encoding=None)
        samples: list[float] = []
        for i in range(N_ECHO + 20):
            ch = bytes([97 + i % 26])
            t0 = time.perf_counter()
            proc.stdin.write(ch)
            got = await proc.stdout.read(1)
            dt = time.perf_counter() - t0
            assert got == ch, (got, ch)
            if i >= 20:  # warm-up
                samples.append(dt)
        proc.stdin.write(b"\x04")
        proc.close()
        return samples


async def bulk(t: Target) -> float:
    async with t.connect() as conn:
        proc = await conn.create_process(f"head -c {BULK_MB}M /dev/zero", encoding=None)
        n = 0
        t0 = time.perf_counter()
        while True:
            chunk = await proc.stdout.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
        dt = time.perf_counter() - t0
        await proc.wait()
        assert n == BULK_MB << 20, n
        return n / dt / 1e6


async def setup_time(t: Target) -> list[float]:
    samples: list[float] = []
    for _ in range(N_SETUP):
        t0 = time.perf_counter()
        async with t.connect() as conn:
            await conn.run("true")
        samples.append(time.perf_counter() - t0)
    return samples


async def lock_latency(settings: Any, port: int, work: Path, known: str, ca: Path) -> list[float]:
    from auditcast.access.lock_model import LockTargets, new_lock
    from auditcast.access.publish import Publisher
    from auditcast.topics import LOCKS

    pub = Publisher(settings)
    samples: list[float] = []
    try:
        for i in range(N_LOCK):
            user = f"locked{i}"
            ident = await asyncio.to_thread(user_cert, work, user, ca)
            t = Target(port, "root@node1", ident, known)
            async with t.connect() as conn:
                proc = await conn.create_process("cat", term_type="xterm", encoding=None)
                proc.stdin.write(b"x")
                await proc.stdout.read(1)
                lock = new_lock(LockTargets(user=user), ttl=None, message="bench")
                t0 = time.perf_counter()
                await pub.send(LOCKS, lock.name.encode(), lock.to_record())
                buf = b""
                while b"session terminated" not in buf:
                    chunk = await asyncio.wait_for(proc.stdout.read(4096), 10)
                    if not chunk:
                        break
                    buf += chunk
                samples.append(time.perf_counter() - t0)
                assert b"session terminated" in buf, buf
    finally:
        await pub.close()
    return samples


async def measure(settings: Any, gw_port: int, node_port: int, work: Path, known: str) -> Any:
    ca = settings.home_dir / "ca" / "user_ca"
    ident = await asyncio.to_thread(user_cert, work, "bench", ca)
    direct = Target(node_port, "root", ident, known)
    gw = Target(gw_port, "root@node1", ident, known)
    out: dict[str, Any] = {}

    # Rounds alternate direct and gateway so load from other processes on the machine
    # hits both alike; latency samples are pooled, throughput is the median round.
    d: list[float] = []
    g: list[float] = []
    bd: list[float] = []
    bg: list[float] = []
    for _ in range(ROUNDS):
        d += await echo_rtt(direct)
        g += await echo_rtt(gw)
    for _ in range(ROUNDS):
        bd.append(await bulk(direct))
        bg.append(await bulk(gw))
    pd, pg = percentiles(d), percentiles(g)
    out["echo_rtt"] = {
        "direct": pd,
        "gateway": pg,
        "added_p50_ms": round(pg["p50_ms"] - pd["p50_ms"], 3),
        "added_p99_ms": round(pg["p99_ms"] - pd["p99_ms"], 3),
        "samples": len(g),
        "target": "added p50 < 1 ms",
    }
    md_bulk, mg_bulk = statistics.median(bd), statistics.median(bg)
    out["bulk_output"] = {
        "mb": BULK_MB,
        "direct_mb_s": [round(x, 1) for x in bd],
        "gateway_mb_s": [round(x, 1) for x in bg],
        "ratio": round(mg_bulk / md_bulk, 3),
        "ratio_per_round": [round(b / a, 3) for a, b in zip(bd, bg, strict=True)],
        "target": ">= 0.6",
    }
    sd, sg = await setup_time(direct), await setup_time(gw)
    md, mg = statistics.median(sd), statistics.median(sg)
    out["session_setup"] = {
        "direct_ms": round(md * 1000, 2),
        "gateway_ms": round(mg * 1000, 2),
        "ratio": round(mg / md, 3),
        "target": "<= 1.5",
    }
    lk = await lock_latency(settings, gw_port, work, known, ca)
    out["lock_to_notice"] = {**percentiles(lk), "trials": len(lk), "target": "p99 < 250 ms"}
    out["summary"] = [
        target("keystroke echo: added p50", out["echo_rtt"]["added_p50_ms"], "<", 1, "ms"),
        figure("keystroke echo: added p99", out["echo_rtt"]["added_p99_ms"], "ms"),
        target("bulk output / direct", out["bulk_output"]["ratio"], ">=", 0.6),
        target("session setup / direct", out["session_setup"]["ratio"], "<=", 1.5),
        target("lock to notice: p99", out["lock_to_notice"]["p99_ms"], "<", 250, "ms"),
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-gateway", help="settings JSON (internal)")
    parser.add_argument("--node-port", type=int)
    args = parser.parse_args()
    if args.serve_gateway:
        asyncio.run(serve_gateway(args.serve_gateway, args.node_port))
        return

    from auditcast.broker import EmbeddedBroker
    from auditcast.kafka import ensure_topics
    from auditcast.settings import Settings
    from tests.ssh.nodes import start_node

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = EmbeddedBroker(log_path=work / "tansu.log", die_with_parent=True)
        asyncio.run(broker.start())
        settings = Settings(home=work / "home", kafka=broker.bootstrap)
        asyncio.run(ensure_topics(settings))
        from auditcast.access.ca import load_ca

        ca = load_ca(settings)
        ca_dir = ca.dir
        known = ca.host_ca_known_hosts_line() + "\n"
        node = start_node(
            "node1", {"env": "bench"}, work / "nodes", ca_dir / "user_ca.pub", ca_dir / "host_ca"
        )
        settings_json = json.dumps({"home": str(settings.home), "kafka": settings.kafka})
        gw_proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_ssh", "--serve-gateway", settings_json,
             "--node-port", str(node.port)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "AUDITCAST_LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        try:
            assert gw_proc.stdout is not None
            line = gw_proc.stdout.readline()
            if not line:
                raise SystemExit("gateway process did not start")
            gw_port = json.loads(line)["port"]
            result = asyncio.run(measure(settings, gw_port, node.port, work, known))
            print(json.dumps({"bench": "ssh", **result}, indent=2))
        finally:
            gw_proc.terminate()
            gw_proc.wait(20)
            node.stop()
            broker.stop()


if __name__ == "__main__":
    main()
