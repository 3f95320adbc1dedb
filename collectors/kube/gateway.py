"""The Kubernetes API gateway: authenticate, check locks and roles, impersonate, forward,
record.

Clusters are selected by path prefix: kubectl's `server:` is
`https://GATEWAY:3026/cluster/NAME`, so `/cluster/NAME/api/v1/pods` goes to cluster NAME
as `/api/v1/pods`. The token must have been issued for that cluster (`aud`), so a token
for one cluster never opens another.

Per request: verify the bearer token, check the lock view, check the role's cluster
labels and per-session MFA, drop the client's Authorization and any Impersonate-*
headers, add `Impersonate-User`/`Impersonate-Group` and `Audit-ID` (the id of the
`kube.request` event, so the cluster's audit log links back to it), forward and stream
the answer back as it arrives. exec/attach WebSockets are tapped into a session
recording. Refusals of our own are Kubernetes `Status` objects naming the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from auditcast.collectors.kube.channels import (
    CHANNEL_PROTOCOLS,
    KNOWN_PROTOCOLS,
    ChannelCodec,
    negotiate,
    parse_protocol_header,
)
from auditcast.collectors.kube.eventjson import event_json
from auditcast.collectors.kube.h1client import (
    ANSWER_TIMEOUT,
    Answer,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from auditcast.collectors.kube.h2front import AlpnSite, http_version
from auditcast.collectors.kube.policy import (
    KubeClaims,
    RolePolicy,
    authorize_cluster,
    refusal,
    status_doc,
    upstream_headers,
)
from auditcast.collectors.kube.quick import Head, RequestConn, answer_of, header_bytes
from auditcast.collectors.kube.requestinfo import RequestInfo, is_follow_logs, parse_request_info
from auditcast.collectors.kube.upstreams import UpstreamCluster
from auditcast.collectors.kube.wsframes import (
    HandshakeError,
    accept_key,
    check_client_handshake,
    check_server_handshake,
    new_key,
)
from auditcast.collectors.kube.wsrelay import (
    CLOSE_TIMEOUT,
    ByteRelay,
    ChannelTap,
    ClientSide,
    RawReader,
    UpstreamConn,
    WsRelay,
)
from auditcast.errors import AccessError, InvalidToken, Locked
from auditcast.events import Event, Source, new_event_id
from auditcast.topics import EVENTS_RAW

log = logging.getLogger("auditcast.kube.gateway")

CLUSTER_PREFIX: Final = "/cluster/"
# kube-apiserver accepts up to 1 MiB of headers (Go's http.DefaultMaxHeaderBytes); a
# kubectl request carries about 1 KiB plus a ~1 KiB token. 32 KiB leaves room for large
# JWTs and many Impersonate-* style headers while refusing header floods early.
MAX_HEADER_BYTES: Final = 32 * 1024
# The apiserver limits request bodies to 3 MiB (MaxRequestBodyBytes); we match it for
# the requests we buffer (everything but streams).
MAX_BODY_BYTES: Final = 3 * 1024 * 1024
WS_MAX_MSG: Final = 16 * 1024 * 1024
# kubectl sends the same token on every call for its lifetime; re-checking an EdDSA
# signature each time costs more than the rest of the request path. A verified token is
# trusted for at most this long (and never past its `exp`); locks are checked every time.
TOKEN_CACHE_SECONDS: Final = 30.0
TOKEN_CACHE_SIZE: Final = 10_000
# Events are written just after the answer has gone out (the next turn of the loop), so
# their building and spooling is not part of the request's latency. At most this many
# wait: past it, an event is written at once (the loop is then too busy to come round).
EMIT_BACKLOG_MAX: Final = 256


class TokenVerifier(Protocol):
    def __call__(self, token: str, cluster: str) -> KubeClaims: ...


class LockSource(Protocol):
    """access.locks.LockView, as the gateway uses it."""

    def check(self, subject: Any) -> Any: ...

    def add_listener(self, listener: Callable[[Any], None]) -> Callable[[], None]: ...


class EventSink(Protocol):
    """collectors.spool.Spool, as the gateway uses it. A sink that also has Spool's
    `append(topic_name, key, value)` gets the events as JSON made without the model
    (collectors.kube.eventjson); any other gets `Event`s."""

    def append_event(self, event: Event) -> None: ...


class Recorder(Protocol):
    """collectors.session.SessionRecorder, as the gateway uses it."""

    session_id: str

    def output(self, data: bytes) -> Any: ...

    def input(self, data: bytes) -> Any: ...

    def resize(self, cols: int, rows: int) -> Any: ...


RecorderFactory = Callable[..., Any]
SubjectFactory = Callable[[KubeClaims], Any]


async def _maybe(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


@dataclass(eq=False)
class LiveStream:
    """A held-open request (watch, logs -f, exec/attach): closed when its target is locked."""

    claims: KubeClaims
    subject: Any
    close: Callable[[str], Awaitable[None]]
    kind: str
    opened: float = field(default_factory=time.monotonic)
    closed_by_lock: str = ""
    closed_at: float = 0.0
    # why we ended it ourselves (a lock, the gateway's stop): its handler then finishes
    # quietly instead of ending with the cancellation `close` caused
    ended_by_us: str = ""

    async def end(self, reason: str) -> None:
        """Close it from our side, for `reason`."""
        self.ended_by_us = self.ended_by_us or reason
        await self.close(reason)


@dataclass
class GatewayStats:
    requests: int = 0
    quick: int = 0  # of them answered by `answer_quick` (see quick.py)
    refused: int = 0
    lock_closures: list[float] = field(default_factory=list)  # seconds lock-seen → closed


class KubeGateway:
    def __init__(
        self,
        clusters: Mapping[str, UpstreamCluster],
        verify: TokenVerifier,
        sink: EventSink,
        *,
        locks: LockSource | None = None,
        subject_of: SubjectFactory | None = None,
        roles: RolePolicy | None = None,
        recorder: RecorderFactory | None = None,
        instance: str = "kube-gateway",
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.clusters = dict(clusters)
        self.verify = verify
        self.sink = sink
        self.locks = locks
        self.subject_of = subject_of or (lambda c: c)
        self.roles = roles
        self.recorder = recorder
        self.instance = instance
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.answer_timeout = answer_timeout
        self.live: set[LiveStream] = set()
        self.stats = GatewayStats()
        self._tokens: dict[tuple[str, str], tuple[KubeClaims, Any, float]] = {}
        self._backlog: list[dict[str, Any]] = []
        self._drain_handle: asyncio.Handle | None = None
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._ssl: dict[str, ssl.SSLContext] = {}
        self._pools: dict[str, UpstreamPool] = {}
        self._remove_listener: Callable[[], None] | None = None
        self._runner: web.BaseRunner | None = None
        self.port = 0

    # lifecycle -----------------------------------------------------------------------
    def server(self) -> web.Server:
        """aiohttp's low-level server around `handle`: every path is ours, so there is
        no router or Application (their lookup and request wrapping cost ~5 % of the
        gateway's CPU per GET). `handle` answers `Expect` itself (the router did)."""
        # aiohttp's own header limits sit above ours so that we, not the parser, answer
        # an oversized header with a readable 431.
        return web.Server(
            self.handle,
            request_factory=self._make_request,
            # a client that hangs up ends its watch / logs -f at once (and its end event)
            handler_cancellation=True,
            access_log=None,
            max_field_size=4 * self.max_header_bytes,
            max_line_size=4 * self.max_header_bytes,
        )

    def _make_request(
        self,
        message: Any,
        payload: Any,
        protocol: Any,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=self.max_body_bytes,
        )

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext) -> None:
        for c in self.clusters.values():
            self._ssl[c.name] = c.ssl_context()
            self._pools[c.name] = UpstreamPool(c.url, self._ssl[c.name], self.answer_timeout)
            self._sessions[c.name] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl[c.name], limit=256),
                auto_decompress=False,
                # one session carries every user's requests: a cookie set by an answer to
                # one of them (an app behind services/NAME/proxy) must never ride along
                # on another's, so the gateway keeps no cookies (clients keep their own)
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, connect=10),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        if self.locks is not None:
            self._remove_listener = self.locks.add_listener(self._on_lock)
        self._runner = web.ServerRunner(self.server(), handle_signals=False)
        await self._runner.setup()
        # ALPN: http/1.1 connections go to aiohttp, h2 ones to h2front (same handler)
        site = AlpnSite(
            self._runner,
            host,
            port,
            ssl_context=ssl_context,
            backlog=512,
            max_header_list_size=4 * self.max_header_bytes,
            quick=self,  # one-shot requests without a body: `answer_quick`, see quick.py
        )
        await site.start()
        self.port = _bound_port(site)

    async def stop(self) -> None:
        if self._remove_listener:
            self._remove_listener()
        for s in list(self.live):
            with contextlib.suppress(Exception):
                await s.end("the gateway is shutting down")
        if self._runner:
            await self._runner.cleanup()
        for session in self._sessions.values():
            await session.close()
        for pool in self._pools.values():
            pool.close()
        self._drain()

    # locks ---------------------------------------------------------------------------
    def _on_lock(self, lock: Any) -> None:
        """Called by the lock view for every new lock: end the target's live streams."""
        now = datetime.now(UTC)
        seen = time.monotonic()
        for s in list(self.live):
            if s.closed_by_lock:
                continue
            try:
                hit = lock.matches(s.subject, now)
            except Exception:
                log.exception("lock match failed")
                continue
            if hit:
                s.closed_by_lock = lock.name
                message = f"access locked by {lock.name}" + (
                    f": {lock.message}" if getattr(lock, "message", "") else ""
                )
                task = asyncio.ensure_future(s.end(message))
                task.add_done_callback(functools.partial(self._closed, s, seen))

    def _closed(self, s: LiveStream, seen: float, _task: object = None) -> None:
        s.closed_at = time.monotonic()
        self.stats.lock_closures.append(s.closed_at - seen)

    def _check_lock(self, claims: KubeClaims, subject: Any) -> None:
        if self.locks is None:
            return
        lock = self.locks.check(subject)
        if lock is not None:
            raise Locked(
                f"access locked by {lock.name}"
                + (f": {lock.message}" if getattr(lock, "message", "") else ""),
                lock_name=lock.name,
            )

    # the request path ------------------------------------------------------------------
    def _admit(self, token: str, cluster: UpstreamCluster) -> tuple[KubeClaims, Any]:
        """Every check a request passes before it is forwarded (token, lock, the roles'
        cluster labels and MFA), for `handle` and `answer_quick` alike; raises
        AccessError. Returns the token's claims and lock subject."""
        if not token:
            raise InvalidToken("no bearer token: kubectl must use the auditcast exec plugin")
        claims, subject = self._verified(token, cluster.name)
        self._check_lock(claims, subject)
        authorize_cluster(claims, cluster.labels, self.roles)
        return claims, subject

    def _verified(self, token: str, cluster: str) -> tuple[KubeClaims, Any]:
        """The token's claims and lock subject (which follows from the claims alone)."""
        now = time.time()
        hit = self._tokens.get((token, cluster))
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        claims = self.verify(token, cluster)
        subject = self.subject_of(claims)
        until = now + TOKEN_CACHE_SECONDS
        if claims.expires is not None:
            until = min(until, claims.expires)
        if len(self._tokens) >= TOKEN_CACHE_SIZE:
            self._tokens = {k: v for k, v in self._tokens.items() if v[2] > now}
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
        self._tokens[(token, cluster)] = (claims, subject, until)
        return claims, subject

    def _refuse(
        self, code: int, doc: dict[str, Any], request: web.BaseRequest | None = None
    ) -> web.Response:
        self.stats.refused += 1
        log.info("refused", extra={"fields": {"code": code, "reason": doc.get("message")}})
        if request is not None and _is_discovery(request.path):
            # kubectl's discovery client ignores a JSON Status and prints "unknown"; it
            # shows a text/plain body as the error message, so say it in plain text there.
            return web.Response(status=code, text=str(doc["message"]), content_type="text/plain")
        return web.Response(status=code, body=orjson.dumps(doc), content_type="application/json")

    def _header_bytes(self, request: web.BaseRequest) -> int:
        return header_bytes(request.raw_path, request.raw_headers)

    async def answer_quick(self, head: Head, conn: RequestConn, version: str) -> Answer | None:
        """`handle` for a quick request (see quick.py) that passes every check, without
        aiohttp's request and response objects; None for anything else (a refusal, a
        percent-encoded path, oversized headers), which `handle` then answers with its
        event. Nothing here has an effect before the checks have passed."""
        t0 = time.monotonic()
        target, url = head.target, head.url
        path = target.partition("?")[0]
        if url is None or not path.startswith(CLUSTER_PREFIX) or "%" in path:
            return None
        if header_bytes(target, head.raw_headers) > self.max_header_bytes:
            return None
        name, _, rest = path[len(CLUSTER_PREFIX) :].partition("/")
        cluster = self.clusters.get(name)
        if cluster is None:
            return None
        try:
            claims, _ = self._admit(_bearer(head.header("authorization")), cluster)
        except AccessError:
            return None
        self.stats.requests += 1
        self.stats.quick += 1
        upstream_path = "/" + rest
        info = parse_request_info(head.method, upstream_path, url.query)
        event_id = new_event_id()
        headers = upstream_headers(head.headers, claims, cluster.auth_headers(), event_id)
        peer = conn.peername
        base = self._event_fields(
            cluster, claims, info, event_id, upstream_path,
            remote=peer[0] if isinstance(peer, tuple) else None,
            user_agent=head.header("user-agent"), method=head.method, version=version,
            query=url.query_string,
        )  # fmt: skip
        answer = await self._once(cluster, head.method, target, headers, base, t0, None)
        return answer_of(answer) if isinstance(answer, web.Response) else answer

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        t0 = time.monotonic()
        self.stats.requests += 1
        size = self._header_bytes(request)
        if size > self.max_header_bytes:
            self._auth_failed(request, None, f"request headers of {size} bytes", "")
            return self._refuse(
                431,
                status_doc(
                    431,
                    "RequestHeaderFieldsTooLarge",
                    f"auditcast: request headers of {size} bytes exceed the gateway's "
                    f"{self.max_header_bytes}-byte limit",
                ),
                request,
            )
        path = request.path
        if not path.startswith(CLUSTER_PREFIX):
            return self._refuse(
                404,
                status_doc(
                    404,
                    "NotFound",
                    f"auditcast: no cluster in path {path!r}; the server URL must be "
                    f"https://HOST:PORT/cluster/NAME (run `auditcast login` for a kubeconfig)",
                ),
                request,
            )
        name, _, rest = path[len(CLUSTER_PREFIX) :].partition("/")
        cluster = self.clusters.get(name)
        if cluster is None:
            return self._refuse(
                404, status_doc(404, "NotFound", f"auditcast: unknown cluster {name!r}"), request
            )
        upstream_path = "/" + rest
        token = _bearer(request.headers.get("Authorization"))
        try:
            claims, subject = self._admit(token, cluster)
        except AccessError as err:
            self._auth_failed(request, cluster, err.message, token, err)
            return self._refuse(err.http_status, refusal(err), request)
        if "Expect" in request.headers and request.version == aiohttp.HttpVersion11:
            # (after the checks: a refused client never sends the body it announced)
            expect = request.headers["Expect"]
            if expect.lower() != "100-continue":
                return self._refuse(
                    417,
                    status_doc(417, "ExpectationFailed", f"auditcast: unknown Expect: {expect}"),
                )
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer's own count starts after it

        info = parse_request_info(request.method, upstream_path, request.query)
        event_id = new_event_id()
        headers = upstream_headers(request.headers, claims, cluster.auth_headers(), event_id)
        base = self._event(request, cluster, claims, info, event_id, upstream_path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, cluster, claims, subject, info, headers, base, t0)
        if request.headers.get("Upgrade"):
            return await self._raw_upgrade(
                request, cluster, claims, subject, info, headers, base, t0
            )
        return await self._forward(
            request, cluster, claims, subject, info, headers, base, t0, upstream_path
        )

    def _event(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        claims: KubeClaims,
        info: RequestInfo,
        event_id: str,
        upstream_path: str,
    ) -> dict[str, Any]:
        return self._event_fields(
            cluster, claims, info, event_id, upstream_path,
            remote=request.remote, user_agent=request.headers.get("User-Agent"),
            method=request.method, version=http_version(request), query=request.query_string,
        )  # fmt: skip

    def _event_fields(
        self,
        cluster: UpstreamCluster,
        claims: KubeClaims,
        info: RequestInfo,
        event_id: str,
        upstream_path: str,
        *,
        remote: str | None,
        user_agent: str | None,
        method: str,
        version: str,
        query: str,
    ) -> dict[str, Any]:
        """A kube.request event's fields, but for the answer's."""
        return {
            "id": event_id,
            "type": "kube.request",
            "user": claims.user,
            "credential_id": claims.credential_id,
            "cluster": cluster.name,
            "labels": dict(cluster.labels),
            "source": {
                "collector": "kube-gateway",
                "instance": self.instance,
                "remote_addr": remote,
                "user_agent": user_agent,
            },
            "method": method,
            "http_version": version,
            "request_path": upstream_path,
            "request_query": query,
            "verb": info.verb,
            "api_group": info.api_group,
            "api_version": info.api_version,
            "resource": info.resource,
            "subresource": info.subresource,
            "namespace": info.namespace,
            "name": info.name,
            "kube_users": list(claims.kube_users),
            "kube_groups": list(claims.kube_groups),
            "roles": list(claims.roles),
        }

    def _emit(self, fields: dict[str, Any]) -> None:
        """Record an event once the loop comes round: after the answer that called it
        has been written (a handler's answer goes out in the same turn it returns), and
        whatever the client does next (a hang-up cancels the handler, not this)."""
        self._backlog.append(fields)
        if len(self._backlog) >= EMIT_BACKLOG_MAX:
            self._drain()
        elif self._drain_handle is None:
            try:
                self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)
            except RuntimeError:  # no loop (stopping): write it now
                self._drain()

    def _drain(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        backlog, self._backlog = self._backlog, []
        for fields in backlog:
            self._write(fields)

    def _write(self, fields: dict[str, Any]) -> None:
        if fields.get("phase") or (fields.get("response_code") or 0) >= 400:
            log.info(
                f"{fields['type']} {fields.get('verb', '')} {fields.get('request_path', '')}",
                extra={
                    "event_id": fields.get("id"),
                    "credential_id": fields.get("credential_id"),
                    "user": fields.get("user"),
                    "session_id": fields.get("session_id"),
                    "fields": {
                        k: fields[k]
                        for k in ("cluster", "response_code", "phase", "closed_by_lock", "error")
                        if fields.get(k) is not None
                    },
                },
            )
        try:
            append = getattr(self.sink, "append", None)
            if append is not None:  # the spool: JSON without building the model
                append(EVENTS_RAW, *event_json(fields))
            else:
                self.sink.append_event(Event(**{k: v for k, v in fields.items() if v != ""}))
        except Exception:
            # A full spool must not turn into a silent pass: log it loudly; the spool
            # itself emits collector.spool_full.
            log.exception("could not record kube.request", extra={"event_id": fields.get("id")})

    def _auth_failed(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster | None,
        reason: str,
        token: str,
        err: Exception | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "type": "auth.failed",
            "cluster": cluster.name if cluster else None,
            "labels": dict(cluster.labels) if cluster else {},
            "source": Source(
                collector="kube-gateway",
                instance=self.instance,
                remote_addr=request.remote,
                user_agent=request.headers.get("User-Agent"),
            ),
            "reason": reason,
            "error": type(err).__name__ if err else "RequestHeaderFieldsTooLarge",
            "request_path": request.path,
            "method": request.method,
        }
        lock_name = getattr(err, "lock_name", "")
        if lock_name:
            fields["lock"] = lock_name
        if err is not None and not isinstance(err, InvalidToken) and token:
            # the token was valid: name the actor so the refusal is attributed
            with contextlib.suppress(Exception):
                claims = self.verify(token, cluster.name if cluster else "")
                fields["user"] = claims.user
                fields["credential_id"] = claims.credential_id
        self._emit(fields)

    async def _forward(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        claims: KubeClaims,
        subject: Any,
        info: RequestInfo,
        headers: Any,
        base: dict[str, Any],
        t0: float,
        upstream_path: str,
    ) -> web.StreamResponse:
        streaming = info.verb == "watch" or is_follow_logs(info, request.query)
        body: bytes | None = None
        if request.body_exists:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._refuse(
                    413,
                    status_doc(
                        413,
                        "RequestEntityTooLarge",
                        f"auditcast: request body exceeds the {self.max_body_bytes}-byte limit",
                    ),
                )
        if not streaming:
            return await self._forward_once(request, cluster, headers, base, t0, body)
        url = cluster.url + upstream_path
        if request.query_string:
            url += "?" + request.query_string
        session = self._sessions[cluster.name]
        resp: web.StreamResponse | None = None
        sent = 0
        code = 502
        live: LiveStream | None = None
        try:
            async with session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as up:
                code = up.status
                out_headers = _passed_back(up.headers.items())
                resp = web.StreamResponse(status=code, headers=out_headers)
                await resp.prepare(request)
                self._emit({**base, "response_code": code, "phase": "start", "long_running": True})
                stream_task = asyncio.current_task()

                async def close(reason: str) -> None:
                    if stream_task is not None:
                        stream_task.cancel(reason)

                live = LiveStream(claims, subject, close, "watch")
                self.live.add(live)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                    sent += len(chunk)
        except asyncio.CancelledError:
            if live is None or not live.ended_by_us:
                raise
            # ended by us (a lock, our stop): finish the response so the client sees the end
        except (aiohttp.ClientError, ConnectionError) as e:
            if resp is None:
                return self._bad_gateway(base, cluster, str(e))
        finally:
            if live is not None:
                self.live.discard(live)
                self._emit(_stream_end(base, t0, live, response_code=code, bytes_out=sent))
        assert resp is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    def _bad_gateway(
        self,
        base: dict[str, Any],
        cluster: UpstreamCluster,
        reason: str,
        what: str = "unreachable",
        code: int = 502,
    ) -> web.Response:
        """The 502 (or 504: `code`) for a request the cluster did not answer usably, and
        its event."""
        self._emit({**base, "response_code": code, "error": reason})
        kind = "Timeout" if code == 504 else "BadGateway"
        return self._refuse(
            code, status_doc(code, kind, f"auditcast: cluster {cluster.name} {what}: {reason}")
        )

    async def _forward_once(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        headers: CIMultiDict[str],
        base: dict[str, Any],
        t0: float,
        body: bytes | None,
    ) -> web.StreamResponse:
        """A request answered once (not a watch or logs -f): see `_once`."""
        answer = await self._once(
            cluster, request.method, request.raw_path, headers, base, t0, body
        )
        if isinstance(answer, web.Response):
            return answer
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    def _target(self, cluster: UpstreamCluster, raw: str, base: dict[str, Any]) -> str:
        """The request target on the cluster for `raw`, the target the client sent
        (/cluster/NAME/... and the query, as encoded)."""
        pool = self._pools[cluster.name]
        prefix = CLUSTER_PREFIX + cluster.name + "/"
        if raw.startswith(prefix):
            return pool.base_path + raw[len(prefix) - 1 :]
        # the client percent-encoded the prefix itself: forward the decoded form
        return str(
            URL.build(path=pool.base_path + base["request_path"]).with_query(base["request_query"])
        )

    async def _once(
        self,
        cluster: UpstreamCluster,
        method: str,
        raw: str,
        headers: CIMultiDict[str],
        base: dict[str, Any],
        t0: float,
        body: bytes | None,
    ) -> Answer | web.Response:
        """A request answered once, on the small HTTP/1.1 client, the answer read whole:
        its status, the headers the client gets and its body; or the 502/504 refusal
        when the cluster did not answer. `raw` is the request target as the client sent
        it (/cluster/NAME/... and the query)."""
        pool = self._pools[cluster.name]
        target = self._target(cluster, raw, base)
        try:
            answer = await pool.request(method, target, headers.items(), body)
        except asyncio.CancelledError:
            # the client hung up first; the cluster may have acted on the request all the
            # same (and its audit log has our Audit-ID): it is recorded, unanswered
            self._emit(
                {
                    **base,
                    "error": "the client closed the connection before the answer",
                    "latency_ms": round((time.monotonic() - t0) * 1000, 3),
                    "bytes_in": len(body or b""),
                }
            )
            raise
        except UpstreamTimeout as e:
            return self._bad_gateway(base, cluster, str(e), "stopped answering", code=504)
        except (OSError, EOFError, TimeoutError, UpstreamProtocolError) as e:
            what = "answered badly" if isinstance(e, UpstreamProtocolError) else "unreachable"
            return self._bad_gateway(base, cluster, str(e) or type(e).__name__, what)
        self._emit(
            {
                **base,
                "response_code": answer.status,
                "latency_ms": round((time.monotonic() - t0) * 1000, 3),
                "bytes_in": len(body or b""),
                "bytes_out": len(answer.body),
            }
        )
        answer.headers = _passed_back(answer.headers)
        return answer

    # WebSocket streams (exec, attach, port-forward) ---------------------------------------
    async def _websocket(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        claims: KubeClaims,
        subject: Any,
        info: RequestInfo,
        headers: Any,
        base: dict[str, Any],
        t0: float,
    ) -> web.StreamResponse:
        """Relay a WebSocket upgrade (wsrelay.py): the handshake with each side is ours,
        the frames pass untouched and are tapped into the session recording."""
        offered = parse_protocol_header(request.headers.get("Sec-WebSocket-Protocol"))
        protocol = negotiate(offered)
        try:
            if protocol is None:
                raise HandshakeError(
                    "unsupported WebSocket subprotocol(s) "
                    f"{', '.join(offered) or '(none)'}; the gateway speaks "
                    f"{', '.join(sorted(KNOWN_PROTOCOLS))}"
                )
            client_key = check_client_handshake(request.headers)
        except HandshakeError as e:
            self._emit({**base, "response_code": 400, "error": e.message})
            return self._refuse(400, status_doc(400, "BadRequest", f"auditcast: {e.message}"))
        known = [p for p in offered if p in KNOWN_PROTOCOLS]
        key = new_key()
        upgrade = [
            "Connection: Upgrade",
            "Upgrade: websocket",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {', '.join(known)}",
        ]
        dialed = await self._dial_upgrade(request, cluster, headers, upgrade, base, t0, {})
        if isinstance(dialed, web.StreamResponse):
            return dialed
        conn, up_headers = dialed
        try:
            chosen = check_server_handshake(up_headers, key, ["", *known]) or protocol
        except HandshakeError as e:
            conn.close()
            return self._bad_gateway(base, cluster, e.message, "answered badly")
        resp = web.StreamResponse(status=101)
        resp.headers.update(
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Accept": accept_key(client_key),
                "Sec-WebSocket-Protocol": chosen,
            }
        )
        if "Audit-Id" in up_headers:
            resp.headers["Audit-Id"] = up_headers["Audit-Id"]
        client, to_client = await _take_over(request, resp)
        self._emit({**base, "response_code": 101, "phase": "start", "long_running": True})
        recorder = None
        codec: ChannelCodec | None = None
        if chosen in CHANNEL_PROTOCOLS:
            codec = ChannelCodec(chosen)
            if self.recorder is not None and info.subresource in ("exec", "attach"):
                recorder = await self._start_recording(request, cluster, claims, info, base)
        tap = ChannelTap(codec, recorder)
        relay = WsRelay(client, to_client, conn, tap, WS_MAX_MSG)
        pump_task = asyncio.current_task()

        async def close(reason: str) -> None:
            relay.close_for(reason, _locked_status(reason))
            await relay.ended(CLOSE_TIMEOUT)  # kubectl answers the close, or is dropped
            if pump_task is not None:
                pump_task.cancel()

        live = LiveStream(claims, subject, close, info.subresource or "websocket")
        self.live.add(live)
        try:
            await relay.run()
        except asyncio.CancelledError:
            if not live.ended_by_us:
                raise
        finally:
            self.live.discard(live)
            conn.close()
            _hang_up(request)  # after what was written to it: a close frame, say
            fields = _stream_end(
                base,
                t0,
                live,
                response_code=101,
                bytes_in=relay.bytes_in,
                bytes_out=relay.bytes_out,
                exit_code=tap.exit_code,
                error=tap.error or None,
            )
            if recorder is not None:
                fields["session_id"] = recorder.session_id
                end_fields = {"closed_by_lock": live.closed_by_lock} if live.closed_by_lock else {}
                if tap.error:
                    end_fields["error"] = tap.error
                with contextlib.suppress(Exception):
                    await _maybe(recorder.end(tap.exit_code, **end_fields))
            self._emit(fields)
        return resp

    async def _dial_upgrade(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        headers: Any,
        upgrade: list[str],
        base: dict[str, Any],
        t0: float,
        fields: dict[str, Any],
    ) -> tuple[UpstreamConn, CIMultiDict[str]] | web.StreamResponse:
        """Send the upgrade request (with the `upgrade` header lines) to the cluster on a
        connection of its own. A 101 gives the connection and the answer's headers; any
        other answer is passed back as the cluster gave it (its Status body: a 403 from
        RBAC, say), recorded with `fields`."""
        up = self._pools[cluster.name]  # the upstream's address and Host header
        try:
            _, conn = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    UpstreamConn,
                    up.host,
                    up.port,
                    ssl=self._ssl[cluster.name],
                    server_hostname=up.host,
                ),
                10,
            )
        except (OSError, TimeoutError) as e:
            return self._bad_gateway(base, cluster, str(e) or type(e).__name__)
        target = self._target(cluster, request.raw_path, base)
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: {up.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [*upgrade, "Content-Length: 0"]
        conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            head = await asyncio.wait_for(conn.read_until(b"\r\n\r\n"), 30)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            code = int(status_line.split(" ", 2)[1])
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            IndexError,
            TimeoutError,
            OSError,
        ) as e:
            conn.close()
            return self._bad_gateway(base, cluster, str(e) or type(e).__name__, "answered badly")
        up_headers: CIMultiDict[str] = CIMultiDict()
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                up_headers.add(k.strip(), v.strip())
        if code == 101:
            return conn, up_headers
        try:
            text = up_headers.get("Content-Length", "0") or "0"
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"Content-Length {text!r}")
            length = min(int(text), self.max_body_bytes)
            body = await asyncio.wait_for(conn.read_exactly(length), 30) if length else b""
        except (asyncio.IncompleteReadError, ValueError, TimeoutError, OSError) as e:
            return self._bad_gateway(base, cluster, str(e) or type(e).__name__, "answered badly")
        finally:
            conn.close()
        self._emit(
            {
                **base,
                "response_code": code,
                **fields,
                "latency_ms": round((time.monotonic() - t0) * 1000, 3),
            }
        )
        keep = ("Content-Type", "Audit-Id")
        return web.Response(
            status=code, body=body, headers={k: up_headers[k] for k in keep if k in up_headers}
        )

    # SPDY (kubectl before 1.30, or its fallback when a WebSocket upgrade fails) ----------
    async def _raw_upgrade(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        claims: KubeClaims,
        subject: Any,
        info: RequestInfo,
        headers: Any,
        base: dict[str, Any],
        t0: float,
    ) -> web.StreamResponse:
        """Relay an `Upgrade: SPDY/3.1` stream byte for byte. Recorded as kube.request
        start/end events, but its channels are not decoded into a session recording."""
        upgrade = request.headers["Upgrade"]
        if not upgrade.upper().startswith("SPDY/"):
            return self._refuse(
                400,
                status_doc(400, "BadRequest", f"auditcast: {upgrade} upgrades are not proxied"),
            )
        dialed = await self._dial_upgrade(
            request,
            cluster,
            headers,
            ["Connection: Upgrade", f"Upgrade: {upgrade}"],
            base,
            t0,
            {"protocol": upgrade},
        )
        if isinstance(dialed, web.StreamResponse):
            return dialed
        conn, up_headers = dialed
        resp = web.StreamResponse(status=101)
        for k in ("Connection", "Upgrade", "X-Stream-Protocol-Version", "Audit-Id"):
            if k in up_headers:
                resp.headers[k] = up_headers[k]
        client, to_client = await _take_over(request, resp)
        self._emit(
            {
                **base,
                "response_code": 101,
                "phase": "start",
                "long_running": True,
                "protocol": upgrade,
                "recorded": False,
            }
        )
        relay = ByteRelay(client, to_client, conn)
        relay_task = asyncio.current_task()

        async def close(reason: str) -> None:
            conn.close()
            _hang_up(request)
            if relay_task is not None:
                relay_task.cancel()

        live = LiveStream(claims, subject, close, info.subresource or "spdy")
        self.live.add(live)
        try:
            await relay.run()
        except asyncio.CancelledError:
            if not live.ended_by_us:
                raise
        finally:
            self.live.discard(live)
            conn.close()
            _hang_up(request)
            self._emit(
                _stream_end(
                    base,
                    t0,
                    live,
                    response_code=101,
                    protocol=upgrade,
                    recorded=False,
                    bytes_in=relay.bytes_in,
                    bytes_out=relay.bytes_out,
                )
            )
        return resp

    async def _start_recording(
        self,
        request: web.BaseRequest,
        cluster: UpstreamCluster,
        claims: KubeClaims,
        info: RequestInfo,
        base: dict[str, Any],
    ) -> Any:
        assert self.recorder is not None
        q = request.query
        recorder = self.recorder(
            kind="kube.exec" if info.subresource == "exec" else "kube.attach",
            user=claims.user,
            credential_id=claims.credential_id,
            cluster=cluster.name,
            labels=dict(cluster.labels),
            namespace=info.namespace,
            pod=info.name,
            container=q.get("container", ""),
            command=q.getall("command", []),
            tty=q.get("tty") in ("1", "true"),
            kube_request_id=base["id"],
            source=base["source"],
        )
        await _maybe(recorder.start())
        return recorder


# Headers of one hop, and the length aiohttp sets itself for the body it sends.
_NOT_PASSED_BACK: Final = frozenset(
    {"transfer-encoding", "connection", "keep-alive", "content-length"}
)


def _bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header ("" for none or another scheme)."""
    auth = authorization or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _passed_back(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's answer headers for the client (repeated ones, e.g. Warning, kept)."""
    return [(k, v) for k, v in headers if k.lower() not in _NOT_PASSED_BACK]


def _locked_status(reason: str) -> bytes:
    return orjson.dumps(status_doc(403, "Forbidden", f"auditcast: {reason}"))


def _stream_end(base: dict[str, Any], t0: float, live: LiveStream, **fields: Any) -> dict[str, Any]:
    """The `kube.request` that ends a held-open request (`base` is its start's): with
    its duration, and the lock that closed it if one did; None fields are left out."""
    end = {
        **base,
        "id": new_event_id(),
        "request_id": base["id"],
        "phase": "end",
        "long_running": True,
        **{k: v for k, v in fields.items() if v is not None},
        "latency_ms": round((time.monotonic() - t0) * 1000, 3),
    }
    if live.closed_by_lock:
        end["closed_by_lock"] = live.closed_by_lock
    return end


async def _take_over(
    request: web.BaseRequest, resp: web.StreamResponse
) -> tuple[RawReader, ClientSide]:
    """Send the 101 and take the client's connection from aiohttp: what it sends from
    now on comes from the RawReader, what we send goes through the ClientSide."""
    writer = await resp.prepare(request)
    transport = request.transport
    assert transport is not None and writer is not None
    client = RawReader(asyncio.Queue(), transport)
    request.protocol.set_parser(client)
    protocol = request.protocol
    return client, ClientSide(transport.write, lambda: protocol.writing_paused, writer.drain)


def _hang_up(request: web.BaseRequest) -> None:
    """Close a taken-over client connection (after what was written to it)."""
    if request.transport is not None:
        request.transport.close()


def _is_discovery(path: str) -> bool:
    """/version, /api, /apis, /api/v1, /apis/G/V (below /cluster/NAME or not)."""
    if path.startswith(CLUSTER_PREFIX):
        path = "/" + path[len(CLUSTER_PREFIX) :].partition("/")[2]
    return not parse_request_info("GET", path, {}).is_resource_request


def _bound_port(site: web.TCPSite) -> int:
    """The port a site bound (for port 0): aiohttp keeps its asyncio server private."""
    server = site._server
    assert server is not None and hasattr(server, "sockets")  # asyncio's or uvloop's Server
    return int(server.sockets[0].getsockname()[1])
