"""The Kubernetes clusters behind the gateway, and how the gateway reaches them.

`$AUDITCAST_HOME/kube-clusters.yaml` (or `--clusters FILE`):

    clusters:
      - name: dev-cluster
        url: https://10.0.0.1:6443
        ca: /etc/auditcast/dev-ca.crt        # PEM bundle that signs the API server
        token_file: /etc/auditcast/dev.token # the gateway's own credential (or token:)
        client_cert: ...                     # or a client certificate + key
        client_key: ...
        labels: {env: dev, team: web}
        impersonation_user: auditcast-gateway  # the user the cluster sees us as

The gateway's upstream identity needs RBAC `impersonate` on users and groups; the
cluster's own RBAC then decides for the impersonated user.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auditcast.errors import ConfigError

CLUSTERS_FILE = "kube-clusters.yaml"


@dataclass(frozen=True)
class UpstreamCluster:
    name: str
    url: str
    ca: Path | None = None
    token: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Who the API server sees when the gateway calls it: the audit webhook tells our
    # own (impersonating) requests from direct ones by this name.
    identity: str = "auditcast-gateway"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.client_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key or self.client_cert))
        return ctx

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _path(base: Path, value: Any) -> Path | None:
    if not value:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def parse_clusters(doc: Any, base: Path) -> dict[str, UpstreamCluster]:
    """Validate the clusters document; relative paths are relative to its folder."""
    if not isinstance(doc, dict) or not isinstance(doc.get("clusters"), list):
        raise ConfigError("kube clusters file must have a `clusters:` list")
    out: dict[str, UpstreamCluster] = {}
    for i, c in enumerate(doc["clusters"]):
        if not isinstance(c, dict) or not c.get("name") or not c.get("url"):
            raise ConfigError(f"kube cluster #{i + 1} needs at least `name` and `url`")
        name = str(c["name"])
        if name in out:
            raise ConfigError(f"kube cluster {name!r} is defined twice")
        token = c.get("token")
        token_file = _path(base, c.get("token_file"))
        if token_file:
            try:
                token = token_file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"kube cluster {name!r}: cannot read token_file: {e}") from None
        labels = c.get("labels") or {}
        if not isinstance(labels, dict):
            raise ConfigError(f"kube cluster {name!r}: labels must be a mapping")
        out[name] = UpstreamCluster(
            name=name,
            url=str(c["url"]).rstrip("/"),
            ca=_path(base, c.get("ca")),
            token=token,
            client_cert=_path(base, c.get("client_cert")),
            client_key=_path(base, c.get("client_key")),
            labels={str(k): str(v) for k, v in labels.items()},
            identity=str(c.get("impersonation_user") or "auditcast-gateway"),
        )
    return out


def load_clusters(path: Path) -> dict[str, UpstreamCluster]:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no kube clusters file at {path}",
            hint=f"describe the upstream API servers in {path} (see `auditcast kube-gateway -h`)",
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_clusters(doc, path.parent)
