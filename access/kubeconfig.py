"""Write kubeconfig entries for auditcast clusters without touching anybody else's.

Pure merge (`merge_kubeconfig`) over plain dicts, and a small writer around it.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from auditcast.access.profile import write_private

PREFIX = "auditcast-"


def default_kubeconfig_path() -> Path:
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0]).expanduser()
    return Path("~/.kube/config").expanduser()


def auditcast_entries(
    clusters: list[str], *, gateway: str, ca_pem: str, auditcast_home: Path
) -> dict[str, list[dict[str, Any]]]:
    """Per cluster: a cluster at `gateway/cluster/NAME`, an exec user, a context."""
    exe = Path(sys.executable).with_name("auditcast")
    ca = base64.b64encode(ca_pem.encode()).decode()
    out: dict[str, list[dict[str, Any]]] = {"clusters": [], "users": [], "contexts": []}
    for name in clusters:
        entry = f"{PREFIX}{name}"
        out["clusters"].append(
            {
                "name": entry,
                "cluster": {
                    "server": f"{gateway}/cluster/{name}",
                    "certificate-authority-data": ca,
                },
            }
        )
        out["users"].append(
            {
                "name": entry,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": str(exe) if exe.exists() else "auditcast",
                        "args": ["kube", "credentials", "--cluster", name],
                        "env": [{"name": "AUDITCAST_HOME", "value": str(auditcast_home)}],
                        "interactiveMode": "IfAvailable",
                        "provideClusterInfo": False,
                    }
                },
            }
        )
        out["contexts"].append({"name": entry, "context": {"cluster": entry, "user": entry}})
    return out


def merge_kubeconfig(
    existing: dict[str, Any] | None, entries: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Replace all `auditcast-*` entries with `entries`; keep every other entry as is."""
    doc: dict[str, Any] = dict(existing or {})
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    doc.setdefault("preferences", {})
    for section in ("clusters", "users", "contexts"):
        kept = [
            e for e in (doc.get(section) or []) if not str(e.get("name", "")).startswith(PREFIX)
        ]
        doc[section] = kept + entries[section]
    current = str(doc.get("current-context") or "")
    names = [c["name"] for c in entries["contexts"]]
    if (not current or current.startswith(PREFIX)) and current not in names:
        doc["current-context"] = names[0] if names else ""
    return doc


def write_kubeconfig(path: Path, entries: dict[str, list[dict[str, Any]]]) -> None:
    existing = yaml.safe_load(path.read_text()) if path.exists() else None
    write_private(path, yaml.safe_dump(merge_kubeconfig(existing, entries), sort_keys=False))
