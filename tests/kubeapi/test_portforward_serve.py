"""The double's port-forward server (portforward.serve) driven by a SPDY client codec over
in-memory queues, against a real loopback echo server: pings, streams, bad bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.kubeapi import portforward
from tests.kubeapi.spdy import GOAWAY, PING, SYN_REPLY, ControlFrame, DataFrame, Frame, SpdyCodec


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class _Wire:
    def __init__(self) -> None:
        self.to_server: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.client = SpdyCodec()
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()

    async def send(self, data: bytes) -> None:  # the server's writes
        async with self._changed:
            self.frames += self.client.feed(data)
            self._changed.notify_all()

    async def until(self, pred: Callable[[], bool], timeout: float = 5) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(pred), timeout)


def _pair(codec: SpdyCodec, port: int, request_id: str = "0") -> bytes:
    h = {"port": [str(port)], "requestID": [request_id]}
    return codec.syn_stream(1, {**h, "streamType": ["error"]}) + codec.syn_stream(
        3, {**h, "streamType": ["data"]}
    )


def test_data_stream_reaches_the_pods_port_and_pings_are_answered() -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        wire = _Wire()
        task = asyncio.create_task(portforward.serve(wire.to_server.get, wire.send, {80: port}))
        c = wire.client
        wire.to_server.put_nowait(
            _pair(c, 80) + c.ping(1) + c.data(3, b"hello") + c.data(3, b"", True)
        )
        await wire.until(
            lambda: any(
                isinstance(f, DataFrame) and f.stream_id == 1 and f.fin for f in wire.frames
            )
        )
        replies = [
            f.stream_id for f in wire.frames if isinstance(f, ControlFrame) and f.type == SYN_REPLY
        ]
        assert replies == [1, 3]
        assert ControlFrame(PING, 0, value=1) in wire.frames
        data = b"".join(
            f.data for f in wire.frames if isinstance(f, DataFrame) and f.stream_id == 3
        )
        assert data == b"hello"
        wire.to_server.put_nowait(None)
        await asyncio.wait_for(task, 5)
        server.close()

    asyncio.run(main())


def test_bytes_that_are_not_spdy_get_a_goaway() -> None:
    async def main() -> None:
        wire = _Wire()
        task = asyncio.create_task(portforward.serve(wire.to_server.get, wire.send, {}))
        wire.to_server.put_nowait(
            b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
        )  # SPDY/2 PING
        await asyncio.wait_for(task, 5)
        assert wire.frames == [ControlFrame(GOAWAY, 0, 0, value=1)]

    asyncio.run(main())
