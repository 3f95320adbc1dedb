"""What there is to reach: Kubernetes clusters and SSH nodes, with their labels.

- clusters: `$AUDITCAST_HOME/kube-clusters.yaml` — the same file the kube gateway reads
  (it also holds the upstream URL and credentials, which access ignores);
- nodes: `$AUDITCAST_HOME/nodes.yaml`:

      nodes:
        - name: node1
          address: 10.0.0.5      # kept in `extra` for the SSH gateway
          port: 22
          labels: {environment: staging}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field

from auditcast.errors import ConfigError
from auditcast.settings import Settings

CLUSTERS_FILE: Final = "kube-clusters.yaml"
NODES_FILE: Final = "nodes.yaml"


class Target(BaseModel):
    """A cluster or a node: a name, labels, and whatever else its collector needs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


def _load(path: Path, section: str) -> list[Target]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return []
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    items = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a `{section}:` list")
    out: list[Target] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("name"):
            raise ConfigError(f"{path}: {section}[{i}] needs a `name`")
        name = str(item["name"])
        if name in seen:
            raise ConfigError(f"{path}: {section} {name!r} is defined twice")
        seen.add(name)
        labels = item.get("labels") or {}
        if not isinstance(labels, dict):
            raise ConfigError(f"{path}: {section} {name!r}: labels must be a mapping")
        extra = {k: v for k, v in item.items() if k not in ("name", "labels")}
        out.append(
            Target(name=name, labels={str(k): str(v) for k, v in labels.items()}, extra=extra)
        )
    return out


def load_clusters(settings: Settings) -> list[Target]:
    return _load(settings.home_dir / CLUSTERS_FILE, "clusters")


def load_nodes(settings: Settings) -> list[Target]:
    return _load(settings.home_dir / NODES_FILE, "nodes")
