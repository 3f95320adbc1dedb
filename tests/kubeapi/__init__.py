"""A test double of the Kubernetes API server (see server.py): real REST, discovery,
RBAC-with-impersonation, exec WebSocket and audit-webhook wire protocols, over TLS."""

from tests.kubeapi.server import (
    ADMIN_TOKEN,
    ADMIN_USER,
    GATEWAY_TOKEN,
    GATEWAY_USER,
    ClusterSpec,
    FakeApiServer,
    Pod,
    Rule,
    ThreadedApiServer,
    demo_spec,
)

__all__ = [
    "ADMIN_TOKEN",
    "ADMIN_USER",
    "GATEWAY_TOKEN",
    "GATEWAY_USER",
    "ClusterSpec",
    "FakeApiServer",
    "Pod",
    "Rule",
    "ThreadedApiServer",
    "demo_spec",
]
