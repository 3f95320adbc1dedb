"""What a Kubernetes API request is about, from its method, path and query alone.

A pure parser modelled on the apiserver's `RequestInfoFactory`
(k8s.io/apiserver/pkg/endpoints/request/requestinfo.go): the same verbs (`list`, `get`,
`watch`, `create`, `update`, `patch`, `delete`, `deletecollection`), the same split of
`/api/v1/namespaces/NS/RESOURCE/NAME/SUBRESOURCE` and `/apis/GROUP/VERSION/...`, and
non-resource requests (`/version`, `/healthz`) get the lower-cased method as verb.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

# Subresources that hold a connection open (streams) rather than answer once.
STREAMING_SUBRESOURCES: Final = frozenset({"exec", "attach", "portforward", "proxy"})
_METHOD_VERBS: Final = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass(frozen=True)
class RequestInfo:
    is_resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    @property
    def is_streaming(self) -> bool:
        """Held open until one side ends it: watch, logs -f, exec/attach/port-forward."""
        return self.verb == "watch" or self.subresource in STREAMING_SUBRESOURCES

    def to_fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def parse_request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """Classify one request like the apiserver does before authorizing it."""
    method = method.upper()
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return RequestInfo(False, path, method.lower())
    prefix = parts[0]
    rest = parts[1:]
    if prefix == "api":
        group = ""
        if not rest:
            return RequestInfo(False, path, method.lower(), api_prefix=prefix)
        version, rest = rest[0], rest[1:]
    else:
        if len(rest) < 2:  # /apis or /apis/GROUP: discovery
            return RequestInfo(False, path, method.lower(), api_prefix=prefix)
        group, version, rest = rest[0], rest[1], rest[2:]
    if not rest:  # /api/v1, /apis/g/v: discovery of one version
        return RequestInfo(
            False, path, method.lower(), api_prefix=prefix, api_group=group, api_version=version
        )

    verb = _METHOD_VERBS.get(method, method.lower())
    # The legacy /watch/ path prefix means the same as ?watch=true.
    if rest[0] == "watch":
        verb, rest = "watch", rest[1:]

    namespace = ""
    if rest and rest[0] == "namespaces":
        if len(rest) > 2:
            namespace, rest = rest[1], rest[2:]
        elif len(rest) == 2:  # /namespaces/NAME is the namespace object itself
            namespace = rest[1]
    if not namespace and "fieldSelector" in query:
        # like the apiserver: a list filtered to one namespace by metadata.namespace
        for term in query["fieldSelector"].split(","):
            if term.startswith("metadata.namespace="):
                namespace = term.split("=", 1)[1]

    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    if resource == "namespaces" and namespace and not name:
        name = namespace  # the apiserver names the namespace object by itself
    subresource = rest[2] if len(rest) > 2 else ""

    if verb in ("get", "delete") and not name:
        verb = "list" if verb == "get" else "deletecollection"
    if verb in ("list", "get") and _truthy(query.get("watch")):
        verb = "watch"
    return RequestInfo(
        True,
        path,
        verb,
        api_prefix=prefix,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )


def is_follow_logs(info: RequestInfo, query: Mapping[str, str]) -> bool:
    return info.subresource == "log" and _truthy(query.get("follow"))
