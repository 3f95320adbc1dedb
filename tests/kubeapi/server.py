"""A TEST DOUBLE of the Kubernetes API server, speaking its real wire protocol.

A real kube-apiserver cannot run on this machine, so tests run real `kubectl` (and the
gateway) against this. It implements just enough, over TLS with its own CA, for kubectl
1.32 `get pods [-n NS] [-w]`, `logs [-f]`, `exec [-it]`, `attach` and `port-forward`:

- `/version`, legacy discovery (`/api`, `/api/v1`, `/apis`: kubectl falls back to it
  when the answer is not aggregated discovery);
- pods list/get/watch in namespaces, as `v1 PodList`/`Pod`/watch events, or `Table`
  when the client asks `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`;
- bearer-token authentication, impersonation (`Impersonate-User`/`Impersonate-Group`
  honoured only from identities allowed to impersonate, like RBAC's `impersonate`
  verb) and Role/RoleBinding-like rules, answering `403` `Status` objects worded like
  the real server;
- exec/attach over WebSocket with the remotecommand subprotocols
  `v5.channel.k8s.io`, `v4.channel.k8s.io` and `v4.base64.channel.k8s.io`: each exec
  runs a real local process (in a PTY with `tty=true`, plain pipes otherwise);
- port-forward (`pods/portforward`, authorized as `create`) speaking real SPDY/3.1
  (spdy.py, portforward.py), tunnelled in WebSocket (`SPDY/3.1+portforward.k8s.io`,
  kubectl's default since 1.31) or after a direct `Upgrade: SPDY/3.1`; each forwarded
  connection reaches a real loopback TCP port from `Pod.ports`;
- the audit webhook backend in batch mode: every request becomes an `audit.k8s.io/v1`
  `Event` (auditID from the `Audit-ID` request header when present, as the apiserver
  does), posted as `EventList` batches to the configured URL.

`seen` lists every request that reached the server, so tests can assert that refused
requests never got this far.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import ssl
import struct
import termios
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from auditcast.collectors.kube.channels import (
    CHANNEL_PROTOCOLS,
    Channel,
    ChannelCodec,
    ChannelEvent,
    MalformedFrame,
    exit_status,
)
from auditcast.collectors.kube.requestinfo import RequestInfo, parse_request_info
from tests.kubeapi import portforward
from tests.kubeapi.pki import TestCA

TABLE_ACCEPT = "as=Table"
PORTFORWARD_TUNNEL = "SPDY/3.1+portforward.k8s.io"
PORTFORWARD_PROTOCOL = "portforward.k8s.io"
STREAM_PROTOCOL = "X-Stream-Protocol-Version"
AUDIT_BATCH_SECONDS = 0.1
CREATED = "2026-11-28T10:00:00Z"


@dataclass
class Rule:
    """One RoleBinding+Role: who (users/groups), where (namespace, "" = all), what."""

    verbs: set[str]
    resources: set[str]
    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    namespace: str = ""

    def allows(self, user: str, groups: list[str], info: RequestInfo) -> bool:
        if user not in self.users and not self.groups.intersection(groups):
            return False
        if self.namespace and self.namespace != info.namespace:
            return False
        resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
        return ("*" in self.verbs or info.verb in self.verbs) and (
            "*" in self.resources or resource in self.resources
        )


@dataclass
class Pod:
    namespace: str
    name: str
    container: str = "main"
    ports: dict[int, int] = field(default_factory=dict)  # container port -> loopback port


@dataclass
class ClusterSpec:
    tokens: dict[str, tuple[str, list[str]]]  # bearer token -> (user, groups)
    impersonators: set[str]
    rules: list[Rule]
    pods: list[Pod]
    workdir: Path
    audit_webhook_url: str | None = None
    audit_webhook_ca: Path | None = None


@dataclass
class Seen:
    method: str
    path: str
    query: str
    user: str
    impersonated: str | None
    groups: list[str]
    headers: dict[str, str]
    status: int = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def status_response(code: int, reason: str, message: str, **details: Any) -> web.Response:
    return web.Response(
        status=code,
        body=orjson.dumps(status_body(code, reason, message, **details)),
        content_type="application/json",
    )


def _pod_json(pod: Pod, uid: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": CREATED,
            "labels": {"app": pod.name},
        },
        "spec": {
            "containers": [
                {
                    "name": pod.container,
                    "image": "busybox:1.36",
                    "command": ["sh"],
                    "stdin": True,
                    "tty": True,
                }
            ],
            "nodeName": "node1",
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.10",
            "startTime": CREATED,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": pod.container,
                    "ready": True,
                    "restartCount": 0,
                    "image": "busybox:1.36",
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": CREATED}},
                }
            ],
        },
    }


def _table(pods: list[dict[str, Any]]) -> dict[str, Any]:
    cols = [
        ("Name", "string", "name"),
        ("Ready", "string", ""),
        ("Status", "string", ""),
        ("Restarts", "string", ""),
        ("Age", "string", ""),
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "1"},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": 0} for n, t, f in cols
        ],
        "rows": [
            {
                "cells": [p["metadata"]["name"], "1/1", "Running", "0", "1h"],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": p["metadata"],
                },
            }
            for p in pods
        ],
    }


def _resource(name: str, kind: str, verbs: str, namespaced: bool = True, **extra: Any) -> Any:
    singular = "" if "/" in name else name.rstrip("s")
    doc = {"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind}
    return {**doc, "verbs": verbs.split(), **extra}


API_V1_RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        _resource(
            "pods",
            "Pod",
            "create delete deletecollection get list patch update watch",
            shortNames=["po"],
            categories=["all"],
        ),
        _resource("pods/attach", "PodAttachOptions", "create get"),
        _resource("pods/exec", "PodExecOptions", "create get"),
        _resource("pods/log", "Pod", "get"),
        _resource("pods/portforward", "PodPortForwardOptions", "create get"),
        _resource("namespaces", "Namespace", "get list", namespaced=False, shortNames=["ns"]),
    ],
}


class FakeApiServer:
    """The test double; `await start()` then use `url`, `ca_path`; `await stop()`."""

    def __init__(self, spec: ClusterSpec, host: str = "127.0.0.1") -> None:
        self.spec = spec
        self.host = host
        self.seen: list[Seen] = []
        self.audit_events: list[dict[str, Any]] = []
        self.audit_posts: list[int] = []  # HTTP status of each webhook batch post
        self._audit_queue: list[dict[str, Any]] = []
        self._uids = {(p.namespace, p.name): str(uuid.uuid4()) for p in spec.pods}
        self._runner: web.AppRunner | None = None
        self._audit_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None  # created on start's loop
        self.port = 0
        self.ca = TestCA.create()
        self.ca_path, self._crt, self._key = self.ca.write(spec.workdir / "pki")

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    # lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._route)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self._crt, self._key)
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=ctx)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._stopping = asyncio.Event()
        if self.spec.audit_webhook_url:
            self._audit_task = asyncio.create_task(self._audit_loop())

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._audit_task:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._audit_task, 5)
        if self._runner:
            await self._runner.cleanup()

    # authentication, impersonation, authorization --------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        audit_id = request.headers.get("Audit-ID") or str(uuid.uuid4())
        received = _now()
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        ident = self.spec.tokens.get(token)
        seen = Seen(
            request.method,
            request.path,
            request.query_string,
            ident[0] if ident else "",
            request.headers.get("Impersonate-User"),
            request.headers.getall("Impersonate-Group", []),
            dict(request.headers),
        )
        self.seen.append(seen)
        info = parse_request_info(request.method, request.path, request.query)
        user = ident[0] if ident else ""
        groups = [*(ident[1] if ident else []), "system:authenticated"]
        impersonated: tuple[str, list[str]] | None = None
        resp: web.StreamResponse
        if ident is None:
            resp = status_response(401, "Unauthorized", "Unauthorized")
        elif seen.impersonated or seen.groups:
            if user not in self.spec.impersonators:
                target = seen.impersonated or seen.groups[0]
                kind = "users" if seen.impersonated else "groups"
                resp = status_response(
                    403,
                    "Forbidden",
                    f'{kind} "{target}" is forbidden: User "{user}" cannot impersonate '
                    f'resource "{kind}" in API group "" at the cluster scope',
                )
            else:
                impersonated = (seen.impersonated or "", seen.groups)
                user = seen.impersonated or user
                groups = [*seen.groups, "system:authenticated"]
                resp = await self._authorized(request, handler, info, user, groups)
        else:
            resp = await self._authorized(request, handler, info, user, groups)
        seen.status = resp.status
        with contextlib.suppress(Exception):
            resp.headers["Audit-Id"] = audit_id
        self._audit(request, info, audit_id, received, ident, impersonated, resp.status)
        return resp

    async def _authorized(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        info: RequestInfo,
        user: str,
        groups: list[str],
    ) -> web.StreamResponse:
        if info.is_resource_request:
            verb = info.verb
            # Since 1.31 a WebSocket exec/attach (a GET) also needs `create` (KEP-3396).
            if info.subresource in ("exec", "attach", "portforward"):
                verb = "create"
            check = RequestInfo(**{**info.__dict__, "verb": verb})
            if not any(r.allows(user, groups, check) for r in self.spec.rules):
                res = info.resource + (f"/{info.subresource}" if info.subresource else "")
                what = f'{info.resource} "{info.name}"' if info.name else info.resource
                where = (
                    f'in the namespace "{info.namespace}"'
                    if info.namespace
                    else "at the cluster scope"
                )
                return status_response(
                    403,
                    "Forbidden",
                    f'{what} is forbidden: User "{user}" cannot {verb} resource "{res}" '
                    f'in API group "{info.api_group}" {where}',
                    name=info.name,
                    kind=info.resource,
                )
        return await handler(request)

    # audit webhook backend (batch mode) ----------------------------------------------
    def _audit(
        self,
        request: web.Request,
        info: RequestInfo,
        audit_id: str,
        received: str,
        ident: tuple[str, list[str]] | None,
        impersonated: tuple[str, list[str]] | None,
        code: int,
    ) -> None:
        event: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "requestURI": request.path_qs,
            "verb": info.verb,
            "user": {
                "username": ident[0] if ident else "system:anonymous",
                "groups": [*(ident[1] if ident else []), "system:authenticated"],
            },
            "sourceIPs": [request.remote or ""],
            "userAgent": request.headers.get("User-Agent", ""),
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": received,
            "stageTimestamp": _now(),
        }
        if impersonated:
            event["impersonatedUser"] = {
                "username": impersonated[0],
                "groups": [*impersonated[1], "system:authenticated"],
            }
        if info.is_resource_request:
            ref = {
                "resource": info.resource,
                "namespace": info.namespace,
                "name": info.name,
                "apiGroup": info.api_group,
                "apiVersion": info.api_version,
                "subresource": info.subresource,
            }
            event["objectRef"] = {k: v for k, v in ref.items() if v}
        self.audit_events.append(event)
        if self.spec.audit_webhook_url:
            self._audit_queue.append(event)

    async def _audit_loop(self) -> None:
        assert self._stopping is not None
        ctx = ssl.create_default_context(cafile=str(self.spec.audit_webhook_ca or ""))
        async with aiohttp.ClientSession() as http:
            while True:
                stopping = self._stopping.is_set()
                if self._audit_queue:
                    batch, self._audit_queue = self._audit_queue, []
                    doc = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}}
                    doc["items"] = batch  # type: ignore[assignment]
                    try:
                        async with http.post(
                            self.spec.audit_webhook_url or "",
                            data=orjson.dumps(doc),
                            headers={"Content-Type": "application/json"},
                            ssl=ctx,
                        ) as r:
                            self.audit_posts.append(r.status)
                    except aiohttp.ClientError:
                        self.audit_posts.append(0)
                if stopping:
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), AUDIT_BATCH_SECONDS)

    # routes ----------------------------------------------------------------------
    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path == "/version":
            return web.json_response(
                {
                    "major": "1",
                    "minor": "32",
                    "gitVersion": "v1.32.0-kubeapi-double",
                    "platform": "linux/amd64",
                }
            )
        if path == "/api":
            return web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                }
            )
        if path == "/apis":
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            return web.json_response(API_V1_RESOURCES)
        info = parse_request_info(request.method, request.path, request.query)
        if info.resource == "pods" and info.api_prefix == "api":
            if not info.name:
                if info.verb == "watch":
                    return await self._watch_pods(request, info)
                if info.verb == "list":
                    return self._list_pods(request, info)
            else:
                pod = self._pod(info)
                if pod is None:
                    return status_response(
                        404,
                        "NotFound",
                        f'pods "{info.name}" not found',
                        name=info.name,
                        kind="pods",
                    )
                if not info.subresource and info.verb == "get":
                    return web.json_response(_pod_json(pod, self._uids[(pod.namespace, pod.name)]))
                if info.subresource in ("exec", "attach"):
                    return await self._exec(request, pod, info.subresource)
                if info.subresource == "log":
                    return await self._log(request, pod)
                if info.subresource == "portforward":
                    return await self._portforward(request, pod)
        return status_response(404, "NotFound", "the server could not find the requested resource")

    def _pod(self, info: RequestInfo) -> Pod | None:
        for p in self.spec.pods:
            if p.namespace == info.namespace and p.name == info.name:
                return p
        return None

    def _pods_in(self, namespace: str) -> list[dict[str, Any]]:
        return [
            _pod_json(p, self._uids[(p.namespace, p.name)])
            for p in self.spec.pods
            if not namespace or p.namespace == namespace
        ]

    def _list_pods(self, request: web.Request, info: RequestInfo) -> web.Response:
        pods = self._pods_in(info.namespace)
        if TABLE_ACCEPT in request.headers.get("Accept", ""):
            return web.json_response(_table(pods))
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": pods,
            }
        )

    async def _watch_pods(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        table = TABLE_ACCEPT in request.headers.get("Accept", "")
        for pod in self._pods_in(info.namespace):
            obj = _table([pod]) if table else pod
            await resp.write(orjson.dumps({"type": "ADDED", "object": obj}) + b"\n")
        # Hold the watch open (as the real server does until its timeout) with no more events.
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(self._until_closed(request), timeout)
        return resp

    async def _until_closed(self, request: web.Request) -> None:
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _log(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"{pod.name} log line {i}\n".encode())
        if request.query.get("follow") == "true":
            i = 3
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.2)
                with contextlib.suppress(ConnectionError):
                    await resp.write(f"{pod.name} log line {i}\n".encode())
                i += 1
        return resp

    # port-forward -----------------------------------------------------------------
    async def _portforward(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        """SPDY/3.1 port-forward tunnelled in WebSocket binary messages (kubectl >= 1.31),
        or straight after `Upgrade: SPDY/3.1` (older kubectl, or the fallback)."""
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade == "spdy/3.1":
            return await self._portforward_spdy(request, pod)
        if upgrade != "websocket":
            return status_response(400, "BadRequest", "Upgrade request required")
        ws = web.WebSocketResponse(protocols=[PORTFORWARD_TUNNEL], autoping=True, max_msg_size=0)
        await ws.prepare(request)
        if ws.ws_protocol != PORTFORWARD_TUNNEL:
            await ws.close(code=1002, message=b"no supported port-forward subprotocol")
            return ws

        async def recv() -> bytes | None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    return bytes(msg.data)
            return None

        with contextlib.suppress(ConnectionError):  # kubectl or the gateway went away
            await portforward.serve(recv, ws.send_bytes, pod.ports)
        await ws.close()
        return ws

    async def _portforward_spdy(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        protocols = [p.strip() for p in request.headers.get(STREAM_PROTOCOL, "").split(",")]
        if PORTFORWARD_PROTOCOL not in protocols:
            return status_response(
                403, "Forbidden", f"no supported {STREAM_PROTOCOL} (want {PORTFORWARD_PROTOCOL})"
            )
        resp = web.StreamResponse(
            status=101,
            headers={
                "Connection": "Upgrade",
                "Upgrade": "SPDY/3.1",
                STREAM_PROTOCOL: PORTFORWARD_PROTOCOL,
            },
        )
        await resp.prepare(request)
        transport = request.transport
        assert transport is not None
        feed = _RawFeed(transport)
        request.protocol.set_parser(feed)  # type: ignore[arg-type]  # any feed_data/feed_eof

        async def send(data: bytes) -> None:
            if transport.is_closing():
                raise ConnectionResetError("port-forward connection closed")
            transport.write(data)
            # a bare transport has no drain(): poll its buffer (bounded at 1 MiB)
            while transport.get_write_buffer_size() > (1 << 20) and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        with contextlib.suppress(ConnectionError):
            await portforward.serve(feed.get, send, pod.ports)
        transport.close()
        return resp

    # exec / attach -----------------------------------------------------------------
    async def _exec(self, request: web.Request, pod: Pod, kind: str) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return status_response(
                400, "BadRequest", "Upgrade request required (this test double speaks WebSocket)"
            )
        ws = web.WebSocketResponse(protocols=CHANNEL_PROTOCOLS, autoping=True, max_msg_size=0)
        await ws.prepare(request)
        if ws.ws_protocol not in CHANNEL_PROTOCOLS:
            await ws.close(code=1002, message=b"no supported channel subprotocol")
            return ws
        codec = ChannelCodec(ws.ws_protocol)
        q = request.query
        command = q.getall("command", []) if kind == "exec" else ["sh"]
        tty = q.get("tty") in ("1", "true")
        workdir = self.spec.workdir / "pods" / pod.namespace / pod.name
        workdir.mkdir(parents=True, exist_ok=True)
        session = _Process(command, tty, workdir, pod.name)
        try:
            await session.start()
        except OSError as e:
            await ws.send_bytes(
                codec.encode(
                    ChannelEvent(
                        Channel.ERROR, orjson.dumps(status_body(500, "InternalError", str(e)))
                    )
                )
            )
            await ws.close()
            return ws

        async def send(event: ChannelEvent) -> None:
            msg = codec.encode(event)
            if isinstance(msg, str):
                await ws.send_str(msg)
            else:
                await ws.send_bytes(msg)

        async def pump_output() -> None:
            async for channel, data in session.output():
                if ws.closed:
                    continue  # drain the process's output; nobody is listening
                with contextlib.suppress(ConnectionError):
                    await send(ChannelEvent(channel, data))

        output = asyncio.create_task(pump_output())

        async def pump_input() -> None:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    continue
                try:
                    ev = codec.decode(msg.data)
                except MalformedFrame as e:
                    await send(
                        ChannelEvent(
                            Channel.ERROR, orjson.dumps(status_body(400, "BadRequest", str(e)))
                        )
                    )
                    await ws.close(code=1007, message=str(e).encode()[:120])
                    session.kill()
                    return
                if ev.channel is Channel.STDIN:
                    session.write(ev.data)
                elif ev.channel is Channel.RESIZE:
                    session.resize(ev.width, ev.height)
                elif ev.channel is Channel.CLOSE and ev.closed is Channel.STDIN:
                    session.close_stdin()
            session.kill()  # client went away

        inputs = asyncio.create_task(pump_input())
        code = await session.wait()
        await output
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await send(ChannelEvent(Channel.ERROR, exit_status(code)))
                await ws.close()
        inputs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await inputs
        return ws


class _RawFeed:
    """The bytes after a raw `101 Switching Protocols`, as aiohttp's payload parser
    hands them over; reading pauses while 64 chunks wait."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._q: asyncio.Queue[bytes | None] = asyncio.Queue()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._q.put_nowait(bytes(data))
        if self._q.qsize() > 64 and isinstance(self._transport, asyncio.ReadTransport):
            self._transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        self._q.put_nowait(None)

    def set_exception(self, exc: BaseException, cause: BaseException | None = None) -> None:
        self._q.put_nowait(None)

    async def get(self) -> bytes | None:
        item = await self._q.get()
        if self._q.qsize() < 8 and isinstance(self._transport, asyncio.ReadTransport):
            self._transport.resume_reading()
        return item


class _Process:
    """A local process behind exec: in a PTY (tty) or with pipes."""

    def __init__(self, command: list[str], tty: bool, cwd: Path, hostname: str) -> None:
        self.command = command or ["sh"]
        self.tty = tty
        self.cwd = cwd
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cwd),
            "HOSTNAME": hostname,
            "PS1": f"{hostname}$ ",
            "TERM": "xterm",
            "LANG": "C.UTF-8",
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.master = -1
        self._queue: asyncio.Queue[tuple[Channel, bytes] | None] = asyncio.Queue(maxsize=64)

    async def start(self) -> None:
        if self.tty:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

            def controlling_tty() -> None:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=controlling_tty,
            )
            os.close(slave)
            os.set_blocking(master, False)
            self.master = master
            asyncio.get_running_loop().add_reader(master, self._on_pty)
        else:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
            self._pipes = [
                asyncio.create_task(self._read_pipe(self.proc.stdout, Channel.STDOUT)),
                asyncio.create_task(self._read_pipe(self.proc.stderr, Channel.STDERR)),
            ]
            self._done = asyncio.create_task(self._pipes_done())

    def _on_pty(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            self._queue.put_nowait(None)
            return
        try:
            self._queue.put_nowait((Channel.STDOUT, data))
        except asyncio.QueueFull:
            # back-pressure: stop reading until the consumer catches up
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.master)
            self._resume = asyncio.create_task(self._put_then_resume((Channel.STDOUT, data)))

    async def _put_then_resume(self, item: tuple[Channel, bytes]) -> None:
        await self._queue.put(item)
        asyncio.get_running_loop().add_reader(self.master, self._on_pty)

    async def _read_pipe(self, stream: asyncio.StreamReader | None, channel: Channel) -> None:
        assert stream is not None
        while data := await stream.read(65536):
            await self._queue.put((channel, data))

    async def _pipes_done(self) -> None:
        await asyncio.gather(*self._pipes)
        await self._queue.put(None)

    async def output(self) -> Any:
        while (item := await self._queue.get()) is not None:
            yield item

    def write(self, data: bytes) -> None:
        if self.tty:
            with contextlib.suppress(OSError):
                os.write(self.master, data)  # small writes from a keyboard; the pty buffers
        elif self.proc and self.proc.stdin:
            self.proc.stdin.write(data)

    def close_stdin(self) -> None:
        if self.tty:
            self.write(b"\x04")
        elif self.proc and self.proc.stdin:
            self.proc.stdin.close()

    def resize(self, cols: int, rows: int) -> None:
        if self.tty:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        return code if code >= 0 else 128 - code


class ThreadedApiServer:
    """The double on its own event loop in a thread, for synchronous tests and benches."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeApiServer(spec)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="kubeapi")

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


GATEWAY_USER = "auditcast-gateway"
GATEWAY_TOKEN = "gateway-upstream-token"
ADMIN_USER = "cluster-admin-direct"
ADMIN_TOKEN = "direct-admin-token"


def demo_spec(workdir: Path, **overrides: Any) -> ClusterSpec:
    """The cluster the tests use: the gateway may impersonate; group `devs` may read pods
    and exec in namespace `dev`, group `viewers` may only read them there; an admin
    token reaches the server directly (bypass)."""
    spec = ClusterSpec(
        tokens={GATEWAY_TOKEN: (GATEWAY_USER, []), ADMIN_TOKEN: (ADMIN_USER, ["system:masters"])},
        impersonators={GATEWAY_USER},
        rules=[
            Rule(
                verbs={"get", "list", "watch", "create"},
                resources={"pods", "pods/exec", "pods/attach", "pods/log", "pods/portforward"},
                groups={"devs"},
                namespace="dev",
            ),
            Rule(
                verbs={"get", "list", "watch"},
                resources={"pods", "pods/log"},
                groups={"viewers"},
                namespace="dev",
            ),
            Rule(verbs={"*"}, resources={"*"}, groups={"system:masters"}),
        ],
        pods=[Pod("dev", "web-0"), Pod("dev", "web-1"), Pod("default", "db-0")],
        workdir=workdir,
    )
    for k, v in overrides.items():
        setattr(spec, k, v)
    return spec
