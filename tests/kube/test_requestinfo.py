"""Request classification like the apiserver's RequestInfo."""

from __future__ import annotations

import pytest

from auditcast.collectors.kube.requestinfo import parse_request_info

# "METHOD PATH?QUERY" -> "verb group version resource subresource namespace name" ("-" = empty)
CASES = {
    "GET /api/v1/namespaces/dev/pods": "list - v1 pods - dev -",
    "GET /api/v1/pods": "list - v1 pods - - -",
    "GET /api/v1/namespaces/dev/pods/web-0": "get - v1 pods - dev web-0",
    "GET /api/v1/namespaces/dev/pods?watch=true": "watch - v1 pods - dev -",
    "GET /api/v1/watch/namespaces/dev/pods": "watch - v1 pods - dev -",
    "POST /apis/apps/v1/namespaces/dev/deployments": "create apps v1 deployments - dev -",
    "PUT /apis/apps/v1/namespaces/dev/deployments/d": "update apps v1 deployments - dev d",
    "PATCH /apis/apps/v1/namespaces/dev/deployments/d/scale": (
        "patch apps v1 deployments scale dev d"
    ),
    "DELETE /api/v1/namespaces/dev/pods/web-0": "delete - v1 pods - dev web-0",
    "DELETE /api/v1/namespaces/dev/pods": "deletecollection - v1 pods - dev -",
    "GET /api/v1/namespaces/dev/pods/web-0/exec?command=sh": "get - v1 pods exec dev web-0",
    "POST /api/v1/namespaces/dev/pods/web-0/exec": "create - v1 pods exec dev web-0",
    "GET /api/v1/namespaces/dev": "get - v1 namespaces - dev dev",
    "GET /apis/rbac.authorization.k8s.io/v1/clusterroles": (
        "list rbac.authorization.k8s.io v1 clusterroles - - -"
    ),
}


@pytest.mark.parametrize(("request_line", "expected"), CASES.items())
def test_resource_requests_are_classified_like_the_apiserver(
    request_line: str, expected: str
) -> None:
    method, target = request_line.split(" ")
    path, _, qs = target.partition("?")
    query = dict(kv.split("=") for kv in qs.split("&") if kv)
    info = parse_request_info(method, path, query)
    assert info.is_resource_request
    got = (info.verb, info.api_group, info.api_version, info.resource, info.subresource)
    assert " ".join(x or "-" for x in (*got, info.namespace, info.name)) == expected


@pytest.mark.parametrize(
    "path", ["/version", "/api", "/apis", "/api/v1", "/apis/apps/v1", "/healthz"]
)
def test_discovery_and_version_are_non_resource_requests(path: str) -> None:
    info = parse_request_info("GET", path, {})
    assert not info.is_resource_request and info.verb == "get"


def test_streaming_requests_are_recognised() -> None:
    assert parse_request_info("GET", "/api/v1/namespaces/d/pods", {"watch": "1"}).is_streaming
    assert parse_request_info("GET", "/api/v1/namespaces/d/pods/p/exec", {}).is_streaming
    assert not parse_request_info("GET", "/api/v1/namespaces/d/pods/p", {}).is_streaming
