"""Run the API-server test double alone: `python -m tests.kubeapi --workdir DIR`.

Prints one JSON line `{"url", "ca", "gateway_token", "admin_token"}` when ready and
serves until SIGTERM/SIGINT. Used by benchmarks to keep the double in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from tests.kubeapi.server import ADMIN_TOKEN, GATEWAY_TOKEN, FakeApiServer, demo_spec


async def serve(workdir: Path) -> None:
    server = FakeApiServer(demo_spec(workdir))
    await server.start()
    doc = {
        "url": server.url,
        "ca": str(server.ca_path),
        "gateway_token": GATEWAY_TOKEN,
        "admin_token": ADMIN_TOKEN,
    }
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.workdir))


if __name__ == "__main__":
    main()
