"""Kube gateway benchmark: what the gateway adds in front of an API server.

Three processes: the API-server test double (tests.kubeapi), the gateway (KubeGateway
with token verification, impersonation, request parsing, event building and the
exec tap) and this client. Measured in the same run against the same double:

1. GET pods latency, one request at a time: p50/p99 direct vs through the gateway
   (the added latency is the difference).
2. GET pods requests/s at concurrency 32: gateway / direct.
3. exec stdout throughput: `cat` of a 200 MB file over the v5.channel.k8s.io WebSocket,
   through the gateway (decoding every frame for the recording tap) vs direct.
4. HTTP/2 (`h2` in the result): GET pods through the gateway over h2 vs over HTTP/1.1 vs
   direct (the double speaks HTTP/1.1 only), with curl for all three (a C client: a
   Python h2 client's own HPACK cost would swamp the figure); latency one at a time and
   requests/s at concurrency 32 (h2: one connection, 32 streams). `--only-h2` runs just
   this part.

Each target also reports `cpu_us_per_request` of the serving processes over the GET
phases (warm-up, latency and concurrency; user+system time from /proc): for `direct`
the double alone, for a gateway the gateway process (`gateway_cpu_us_per_request`) and
the double behind it, and `gateway_cpu_over_upstream_cpu` (the gateway's CPU per request
over the double's in the same phase: a ratio that load drift cancels out of). CPU time
per request is much steadier than wall-clock p50 on a shared, loaded machine.
`--only-http` runs just the GET phases (no exec, h2 or locks); `--only-exec` just the exec
throughput (with the CPU seconds each process spent on the 200 MB).

Two gateways: `gateway` sends its events to a counting sink (the proxy's own cost);
`gateway_recorded` is the production setup, recording through the real Spool and
SessionRecorder (events to the embedded broker, every exec byte into the recording).
`python -m tests.bench.bench_kube` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from auditcast.lifeline import die_with_parent
from tests.bench import target as headline

N_LATENCY = 300
N_THROUGHPUT = 2000
ROUNDS = 3
CONCURRENCY = 32
EXEC_MB = 200
N_LOCK_TRIALS = 40
PODS_PATH = "/api/v1/namespaces/dev/pods"
# A gateway's spool sender child (spool_sender = "process"): its CPU is the gateway's.
SENDER = "_spool_sender"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(s[len(s) // 2] * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
    }


# -- the gateway process ---------------------------------------------------------------
async def serve_gateway(
    upstream: dict[str, str], workdir: Path, settings_json: str | None = None, record: bool = False
) -> None:
    from auditcast.collectors.kube.gateway import KubeGateway
    from auditcast.collectors.kube.upstreams import UpstreamCluster
    from tests.kube.conftest import CollectingSink, TokenMint
    from tests.kubeapi.pki import TestCA

    class CountingSink(CollectingSink):
        """Spool's two append methods, keeping nothing: the serialisation is the
        gateway's cost (it hands the spool JSON through `append`), the disk's is not."""

        def append_event(self, event: Any) -> None:
            event.to_json()

        def append(self, topic_name: str, key: bytes, value: bytes) -> None:
            pass

    mint = TokenMint(workdir / "access-home")
    ca = TestCA.create("bench-gw-ca")
    ca_path, crt, key = ca.write(workdir / "gw-pki", "kube-gateway")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    cluster = UpstreamCluster(
        "dev-cluster",
        upstream["url"],
        ca=Path(upstream["ca"]),
        token=upstream["gateway_token"],
        labels={"env": "dev"},
    )
    gw = KubeGateway({"dev-cluster": cluster}, mint.verify, CountingSink())
    view = None
    spool: Any = None
    if settings_json:
        from auditcast.access.locks import LockView
        from auditcast.collectors.kube.wiring import lock_subject
        from auditcast.settings import Settings

        settings = Settings(**json.loads(settings_json))
        view = LockView(settings)
        await view.start()
        gw.locks, gw.subject_of = view, lock_subject
        if record:
            from auditcast.collectors.session import SessionRecorder
            from auditcast.collectors.spool import Spool

            spool = Spool(settings, "kube-gateway-bench")
            await spool.start()
            gw.sink = spool

            def recorder(kind: str, **fields: Any) -> Any:
                return SessionRecorder(spool, kind=kind, **fields)

            gw.recorder = recorder
    await gw.start("127.0.0.1", 0, tls)
    token = mint.mint("alice", ttl=3600)
    lock_tokens = [mint.mint(f"user{i}", ttl=3600) for i in range(N_LOCK_TRIALS)]
    doc = {
        "port": gw.port,
        "ca": str(ca_path),
        "token": token,
        "lock_tokens": lock_tokens,
        "sink": "spool+SessionRecorder" if spool is not None else "counting sink",
        "sender_pid": spool.sender_pid if spool is not None else None,
    }
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gw.stop()
    if view is not None:
        await view.stop()
    if spool is not None:
        await spool.close(5)


# -- the client ------------------------------------------------------------------------
async def latency(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int
) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append(time.perf_counter() - t)
    return out


async def throughput(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    remaining = N_THROUGHPUT

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.get(url, headers=headers) as r:
                await r.read()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return N_THROUGHPUT / (time.perf_counter() - t)


async def exec_throughput(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], ctx: ssl.SSLContext
) -> float:
    url = (
        base.replace("https", "wss")
        + "/api/v1/namespaces/dev/pods/web-0/exec?command=cat&command=big.bin&stdout=true"
    )
    got = 0
    t = time.perf_counter()
    async with session.ws_connect(
        url, protocols=["v5.channel.k8s.io"], headers=headers, ssl=ctx, max_msg_size=0
    ) as ws:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x01":
                got += len(msg.data) - 1
    elapsed = time.perf_counter() - t
    assert got == EXEC_MB * 1024 * 1024, got
    return got / elapsed / 1e6


async def lock_to_close(gw: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Open an interactive exec per user, lock the user, time until the stream closes."""
    from datetime import timedelta

    from auditcast.access.lock_authority import LockAuthority
    from auditcast.access.lock_model import LockTargets, new_lock

    ctx = ssl.create_default_context(cafile=gw["ca"])
    base = f"wss://127.0.0.1:{gw['port']}/cluster/dev-cluster"
    url = base + "/api/v1/namespaces/dev/pods/web-0/exec?command=sh&stdin=true&stdout=true&tty=true"
    authority = LockAuthority(settings)
    await authority.start()
    samples = []
    async with aiohttp.ClientSession() as s:
        for i, token in enumerate(gw["lock_tokens"]):
            ws = await s.ws_connect(
                url,
                protocols=["v5.channel.k8s.io"],
                headers={"Authorization": f"Bearer {token}"},
                ssl=ctx,
            )
            await ws.send_bytes(b"\x00echo ready\n")
            async for msg in ws:  # wait until the shell is up
                if b"ready" in msg.data:
                    break
            lock = new_lock(LockTargets(user=f"user{i}"), ttl=timedelta(minutes=5))
            t = time.perf_counter()
            await authority.create(lock)
            async for _ in ws:
                pass
            samples.append(time.perf_counter() - t)
    await authority.stop()
    return percentiles(samples) | {"n": len(samples)}


async def _curl(args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "curl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def h2_leg(upstream: dict[str, str], gw: dict[str, Any]) -> dict[str, Any]:
    """curl (libcurl + nghttp2, a C client, so client cost is small and alike for both
    protocols): N_LATENCY GETs one after another on one connection, timed by curl per
    transfer; then N_THROUGHPUT GETs with --parallel-max CONCURRENCY (h2: streams on
    one connection, HTTP/1.1: up to 32 connections), timed as a whole."""
    legs = {
        "direct_h1": (
            upstream["url"],
            upstream["admin_token"],
            upstream["ca"],
            "--http1.1",
        ),
        "gateway_h1": (*_via_parts(gw), "--http1.1"),
        "gateway_h2": (*_via_parts(gw), "--http2"),
    }
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in legs}
    for _ in range(ROUNDS):
        for name, (base, token, ca, proto) in legs.items():
            url = base + PODS_PATH
            common = ["-sS", proto, "--cacert", ca, "-H", f"Authorization: Bearer {token}"]
            fmt = "%{http_code} %{http_version} %{time_pretransfer} %{time_total}\\n"
            out = await _curl([*common, "-w", fmt, *(["-o", "/dev/null", url] * N_LATENCY)])
            rows = [line.split() for line in out.splitlines() if line.strip()]
            assert len(rows) == N_LATENCY and {r[0] for r in rows} == {"200"}, rows[:3]
            assert {r[1] for r in rows} == {"2" if proto == "--http2" else "1.1"}
            lat = [float(total) - float(pre) for _, _, pre, total in rows[10:]]  # warm-up
            t = time.perf_counter()
            await _curl(
                [
                    *common,
                    "--parallel",
                    "--parallel-max",
                    str(CONCURRENCY),
                    *(["-o", "/dev/null", url] * N_THROUGHPUT),
                ]
            )
            rps = N_THROUGHPUT / (time.perf_counter() - t)
            rounds[name].append({**percentiles(lat), "rps_c32": rps})
    out_doc: dict[str, Any] = {"client": "curl", "rounds": ROUNDS}
    for name, rs in rounds.items():
        out_doc[name] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
    d, h1, h2 = out_doc["direct_h1"], out_doc["gateway_h1"], out_doc["gateway_h2"]
    for g in (h1, h2):
        g["added_latency_p50_ms"] = round(g["p50_ms"] - d["p50_ms"], 3)
        g["added_latency_p99_ms"] = round(g["p99_ms"] - d["p99_ms"], 3)
        g["rps_ratio"] = round(g["rps_c32"] / d["rps_c32"], 3)
    out_doc["h2_minus_h1_p50_ms"] = round(h2["p50_ms"] - h1["p50_ms"], 3)
    out_doc["h2_minus_h1_p99_ms"] = round(h2["p99_ms"] - h1["p99_ms"], 3)
    out_doc["h2_over_h1_rps"] = round(h2["rps_c32"] / h1["rps_c32"], 3)
    return out_doc


def _via_parts(gw: dict[str, Any]) -> tuple[str, str, str]:
    return (f"https://127.0.0.1:{gw['port']}/cluster/dev-cluster", gw["token"], gw["ca"])


def _via(gw: dict[str, Any]) -> dict[str, Any]:
    return {
        "url": f"https://127.0.0.1:{gw['port']}/cluster/dev-cluster",
        "headers": {"Authorization": f"Bearer {gw['token']}"},
        "ctx": ssl.create_default_context(cafile=gw["ca"]),
    }


async def measure(
    upstream: dict[str, str],
    gateways: dict[str, dict[str, Any]],
    settings: Any,
    pids: dict[str, int],
    only_http: bool = False,
    only_exec: bool = False,
) -> dict[str, Any]:
    direct = {
        "url": upstream["url"],
        "headers": {"Authorization": f"Bearer {upstream['admin_token']}"},
        "ctx": ssl.create_default_context(cafile=upstream["ca"]),
    }
    targets = {"direct": direct, **{name: _via(gw) for name, gw in gateways.items()}}
    # Rounds alternate direct and gateway so that load from other processes on this
    # shared machine hits both alike; each figure is the median over the rounds.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for _ in range(ROUNDS):
        for name, target in targets.items():
            conn = aiohttp.TCPConnector(ssl=target["ctx"], limit=CONCURRENCY)
            async with aiohttp.ClientSession(connector=conn) as s:
                url = target["url"] + PODS_PATH
                if only_exec:
                    t_cpu = {k: cpu_seconds(pid) for k, pid in pids.items()}
                    mbps = await exec_throughput(s, target["url"], target["headers"], target["ctx"])
                    cpu_s = {k: cpu_seconds(pid) - t_cpu[k] for k, pid in pids.items()}
                    row = {"exec_MBps": mbps, "upstream_cpu_s": cpu_s["upstream"]}
                    if name in gateways:
                        row["gateway_cpu_s"] = cpu_s[name] + cpu_s.get(name + SENDER, 0.0)
                        if name + SENDER in cpu_s:
                            row["spool_sender_cpu_s"] = cpu_s[name + SENDER]
                    rounds[name].append(row)
                    continue
                cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
                await latency(s, url, target["headers"], 50)  # warm-up
                lat = await latency(s, url, target["headers"], N_LATENCY)
                rps = await throughput(s, url, target["headers"])
                n_req = 50 + N_LATENCY + N_THROUGHPUT
                cpu = {k: (cpu_seconds(pid) - cpu0[k]) * 1e6 / n_req for k, pid in pids.items()}
                row = {**percentiles(lat), "rps_c32": rps}
                row["upstream_cpu_us_per_request"] = cpu["upstream"]
                if name in gateways:
                    row["gateway_cpu_us_per_request"] = cpu[name] + cpu.get(name + SENDER, 0.0)
                    if name + SENDER in cpu:
                        row["spool_sender_cpu_us_per_request"] = cpu[name + SENDER]
                    row["cpu_us_per_request"] = row["gateway_cpu_us_per_request"] + cpu["upstream"]
                else:
                    row["cpu_us_per_request"] = cpu["upstream"]
                if not only_http:
                    row["exec_MBps"] = await exec_throughput(
                        s, target["url"], target["headers"], target["ctx"]
                    )
            rounds[name].append(row)
    results: dict[str, Any] = {"rounds": ROUNDS}
    for name, rs in rounds.items():
        results[name] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
    d = results["direct"]
    if only_exec:
        for name in gateways:
            g = results[name]
            g["exec_throughput_ratio"] = round(g["exec_MBps"] / d["exec_MBps"], 3)
        return results
    for name in gateways:
        g = results[name]
        g["added_latency_p50_ms"] = round(g["p50_ms"] - d["p50_ms"], 3)
        g["added_latency_p99_ms"] = round(g["p99_ms"] - d["p99_ms"], 3)
        g["rps_ratio"] = round(g["rps_c32"] / d["rps_c32"], 3)
        g["added_cpu_us_per_request"] = round(g["cpu_us_per_request"] - d["cpu_us_per_request"])
        # the double behind it, measured in the same phase, as the yardstick: this ratio
        # stays put when the machine's load makes every CPU figure drift
        g["gateway_cpu_over_upstream_cpu"] = round(
            g["gateway_cpu_us_per_request"] / g["upstream_cpu_us_per_request"], 3
        )
        if not only_http:
            g["exec_throughput_ratio"] = round(g["exec_MBps"] / d["exec_MBps"], 3)
    if only_http:
        return results
    results["h2"] = await h2_leg(upstream, gateways["gateway"])
    results["lock_created_to_exec_closed"] = await lock_to_close(
        gateways["gateway_recorded"], settings
    )
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline rows of whichever parts ran (see --only-*)."""
    rows = []
    parts = [(name, results.get(name, {})) for name in ("gateway", "gateway_recorded")]
    if "h2" in results:  # curl over h2, as kubectl speaks to the gateway
        parts.append(("gateway_h2", results["h2"]["gateway_h2"]))
    for name, g in parts:
        label = name.replace("_", " ")
        rows += [
            headline(f"{label}: GET added p50", g.get("added_latency_p50_ms"), "<", 1, "ms"),
            headline(f"{label}: GET added p99", g.get("added_latency_p99_ms"), "<", 3, "ms"),
            headline(f"{label}: GET/s at c{CONCURRENCY} / direct", g.get("rps_ratio"), ">=", 0.5),
            headline(f"{label}: exec stdout / direct", g.get("exec_throughput_ratio"), ">=", 0.7),
        ]
    lock = results.get("lock_created_to_exec_closed", {})
    rows.append(headline("lock created to exec closed: p99", lock.get("p99_ms"), "<", 250, "ms"))
    return [r for r in rows if r["value"] is not None]


def _spawn(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=die_with_parent(),  # a bench stopped midway leaves no server behind
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{args} did not start")
    return proc, json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-gateway", help="upstream JSON (internal)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--settings", help="Settings JSON for the lock view (internal)")
    parser.add_argument("--record", action="store_true", help="spool + recorder (internal)")
    parser.add_argument("--only-h2", action="store_true", help="only the HTTP/2 part")
    parser.add_argument("--only-http", action="store_true", help="only the HTTP/1.1 GET part")
    parser.add_argument("--only-exec", action="store_true", help="only the exec throughput")
    args = parser.parse_args()
    only_h2 = bool(args.only_h2)
    only_http = bool(args.only_http)
    only_exec = bool(args.only_exec)
    if args.serve_gateway:
        upstream = json.loads(args.serve_gateway)
        from auditcast.aio import run_service
        from auditcast.settings import Settings

        # on the loop `auditcast kube-gateway` runs on (AUDITCAST_EVENT_LOOP to compare)
        run_service(
            serve_gateway(upstream, args.workdir, args.settings, args.record),
            Settings(home=args.workdir / "home").event_loop,
        )
        return
    from auditcast.broker import EmbeddedBroker
    from auditcast.kafka import ensure_topics
    from auditcast.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pod = work / "upstream" / "pods" / "dev" / "web-0"
        pod.mkdir(parents=True)
        with (pod / "big.bin").open("wb") as f:
            chunk = os.urandom(1024 * 1024)
            for _ in range(EXEC_MB):
                f.write(chunk)
        broker = EmbeddedBroker(log_path=work / "tansu.log", die_with_parent=True)
        asyncio.run(broker.start())
        settings = Settings(home=work / "home", kafka=broker.bootstrap)
        asyncio.run(ensure_topics(settings))
        settings_json = json.dumps({"home": str(settings.home), "kafka": settings.kafka})
        up_proc, upstream = _spawn(["-m", "tests.kubeapi", "--workdir", str(work / "upstream")])
        procs = [up_proc]
        pids = {"upstream": up_proc.pid}
        gateways = {}
        kinds = (
            [("gateway", [])] if only_h2 else [("gateway", []), ("gateway_recorded", ["--record"])]
        )
        for name, extra in kinds:
            argv = ["-m", "tests.bench.bench_kube", "--serve-gateway", json.dumps(upstream)]
            argv += ["--workdir", str(work / name), "--settings", settings_json, *extra]
            proc, gateways[name] = _spawn(argv)
            procs.append(proc)
            pids[name] = proc.pid
            if gateways[name].get("sender_pid"):
                pids[name + SENDER] = gateways[name]["sender_pid"]
        results: dict[str, Any]
        try:
            if only_h2:
                results = {"h2": asyncio.run(h2_leg(upstream, gateways["gateway"]))}
            else:
                results = asyncio.run(
                    measure(upstream, gateways, settings, pids, only_http, only_exec)
                )
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
                p.wait(10)
            broker.stop()
    # This machine is shared: a load average far above its cores makes every figure noise.
    results["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["cpus"] = os.cpu_count()
    results["targets"] = {
        "added_latency_p50_ms": "< 1",
        "added_latency_p99_ms": "< 3",
        "rps_ratio": ">= 0.5",
        "exec_throughput_ratio": ">= 0.7",
        "lock_created_to_exec_closed.p99_ms": "< 250",
    }
    if only_h2:
        results["targets"] = {"h2.gateway_h2.added_latency_p50_ms": "< 1 (as HTTP/1.1)"}
    results["summary"] = summary(results)
    print(json.dumps({"bench": "kube", **results}, indent=2))


if __name__ == "__main__":
    main()
