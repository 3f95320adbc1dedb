"""Port-forward for the API-server test double: a real SPDY/3.1 server (see spdy.py).

Each kubectl connection opens two SPDY streams sharing a `requestid`: an `error` stream
(the server writes a message there if forwarding fails) and a `data` stream, which is
joined to a real TCP connection to `127.0.0.1:<pod.ports[port]>` (the "pod's" port).
`serve()` runs one SPDY connection over any byte transport (WebSocket binary messages
or the raw socket after `Upgrade: SPDY/3.1`) given as a `recv()`/`send()` pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

from tests.kubeapi.spdy import (
    GOAWAY,
    PING,
    RST_STREAM,
    SYN_STREAM,
    ControlFrame,
    DataFrame,
    SpdyCodec,
    SpdyError,
)

CHUNK = 32 * 1024


class _Pair:
    def __init__(self) -> None:
        self.error_id = 0
        self.data_id = 0
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None


async def serve(
    recv: Callable[[], Awaitable[bytes | None]],
    send: Callable[[bytes], Awaitable[None]],
    ports: dict[int, int],
) -> None:
    codec = SpdyCodec()
    lock = asyncio.Lock()
    pairs: dict[str, _Pair] = {}
    by_stream: dict[int, _Pair] = {}
    last_id = 0

    async def out(make: Callable[[], bytes]) -> None:
        async with lock:  # compression state and wire order must agree
            await send(make())

    async def pump(pair: _Pair, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(CHUNK):
                await out(functools.partial(codec.data, pair.data_id, chunk))
            await out(lambda: codec.data(pair.data_id, b"", fin=True))
            await out(lambda: codec.data(pair.error_id, b"", fin=True))

    async def open_data(pair: _Pair, port: str) -> None:
        local = ports.get(int(port)) if port.isdigit() else None
        try:
            if local is None:
                raise OSError(f"no container port {port} in this pod")
            reader, pair.writer = await asyncio.open_connection("127.0.0.1", local)
        except OSError as e:
            msg = f"error forwarding port {port} to pod: {e}".encode()
            await out(lambda: codec.data(pair.error_id, msg, fin=True))
            await out(lambda: codec.data(pair.data_id, b"", fin=True))
            return
        pair.task = asyncio.create_task(pump(pair, reader))

    try:
        while (chunk := await recv()) is not None:
            for frame in codec.feed(chunk):
                if isinstance(frame, DataFrame):
                    pair = by_stream.get(frame.stream_id)
                    if pair is None or pair.writer is None or frame.stream_id != pair.data_id:
                        continue
                    if frame.data:
                        pair.writer.write(frame.data)
                        await pair.writer.drain()
                    if frame.fin and pair.writer.can_write_eof():
                        pair.writer.write_eof()
                    continue
                if frame.type == SYN_STREAM:
                    await _on_syn(frame, codec, out, pairs, by_stream, open_data)
                    last_id = frame.stream_id
                elif frame.type == PING:
                    await out(functools.partial(codec.ping, frame.value))
                elif frame.type == RST_STREAM:
                    p = by_stream.get(frame.stream_id)
                    if p is not None and p.writer is not None:
                        p.writer.close()
                elif frame.type == GOAWAY:
                    return
    except SpdyError:
        with contextlib.suppress(ConnectionError, OSError):
            await out(lambda: codec.goaway(last_id, 1))
    finally:
        for p in pairs.values():
            if p.task is not None:
                p.task.cancel()
            if p.writer is not None:
                p.writer.close()


async def _on_syn(
    frame: ControlFrame,
    codec: SpdyCodec,
    out: Callable[[Callable[[], bytes]], Awaitable[None]],
    pairs: dict[str, _Pair],
    by_stream: dict[int, _Pair],
    open_data: Callable[[_Pair, str], Awaitable[None]],
) -> None:
    h = {k: v[0] if v else "" for k, v in frame.headers.items()}
    kind, port, request_id = h.get("streamtype", ""), h.get("port", ""), h.get("requestid", "")
    sid = frame.stream_id
    if kind not in ("error", "data"):
        await out(lambda: codec.rst_stream(sid, 1))
        return
    await out(lambda: codec.syn_reply(sid, {}))
    pair = pairs.setdefault(request_id, _Pair())
    by_stream[sid] = pair
    if kind == "error":
        pair.error_id = sid
    else:
        pair.data_id = sid
        await open_data(pair, port)
