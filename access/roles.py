"""Roles and the mapping from IdP groups to roles: validated YAML plus pure policy.

`$AUDITCAST_HOME/roles.yaml` (copied from the shipped `roles.example.yaml` on first use):

    group_mappings:            # IdP group -> auditcast roles
      admins: [admin]
    roles:
      devrole:
        kube_groups: [devs]
        kube_labels: {environment: staging}    # allow; "*" matches any value
        kube_labels_deny: {}                   # any matching deny wins
        logins: [dev]
        node_labels: {environment: staging}
        max_session_ttl: 1h
        require_session_mfa: false
        allow_request: []                      # roles this role may request
        review: []                             # roles this role may approve

Every decision here is a plain function over plain data, so it can be tested alone.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from auditcast.errors import ConfigError
from auditcast.settings import Settings

ROLES_FILE: Final = "roles.yaml"
EXAMPLE_ROLES: Final = Path(__file__).resolve().parent / "roles.example.yaml"
# A credential never outlives a working day, whatever a role says.
MAX_TTL: Final = timedelta(hours=12)
DEFAULT_TTL: Final = timedelta(hours=1)

Selector = dict[str, list[str]]
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: Any) -> timedelta:
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration like 30m, 1h or 2d")
    return timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def _selector(value: Any) -> Selector:
    if value in (None, {}, ""):
        return {}
    if value == "*":
        return {"*": ["*"]}
    if not isinstance(value, Mapping):
        raise ValueError("a label selector is a mapping of label -> value or list of values")
    out: Selector = {}
    for k, v in value.items():
        vals = v if isinstance(v, list) else [v]
        out[str(k)] = [str(x) for x in vals]
    return out


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    kube_groups: list[str] = Field(default_factory=list)
    kube_users: list[str] = Field(default_factory=list)
    logins: list[str] = Field(default_factory=list)
    kube_labels: Selector = Field(default_factory=dict)
    # `deny_kube_labels` / `deny_node_labels` (the spelling of the access issue) are
    # accepted too; docs/SEAMS.md names them `*_labels_deny`.
    kube_labels_deny: Selector = Field(
        default_factory=dict, validation_alias=AliasChoices("kube_labels_deny", "deny_kube_labels")
    )
    node_labels: Selector = Field(default_factory=dict)
    node_labels_deny: Selector = Field(
        default_factory=dict, validation_alias=AliasChoices("node_labels_deny", "deny_node_labels")
    )
    max_session_ttl: timedelta = DEFAULT_TTL
    require_session_mfa: bool = False
    allow_request: list[str] = Field(default_factory=list)
    review: list[str] = Field(default_factory=list)
    read_audit: bool = False
    admin: bool = False
    allow_file_transfer: bool = False
    allow_port_forwarding: bool = False
    allow_agent_forwarding: bool = False

    @field_validator(
        "kube_labels", "kube_labels_deny", "node_labels", "node_labels_deny", mode="before"
    )
    @classmethod
    def _labels(cls, v: Any) -> Selector:
        return _selector(v)

    @field_validator("max_session_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> timedelta:
        ttl = v if isinstance(v, timedelta) else parse_ttl(v)
        if ttl <= timedelta(0) or ttl > MAX_TTL:
            raise ValueError(f"must be between 1s and {MAX_TTL}")
        return ttl


class RolesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: dict[str, Role]
    group_mappings: dict[str, list[str]] = Field(default_factory=dict)


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Every key of the selector has one of its values in labels; `*` matches anything."""
    if not selector:
        return False
    for key, values in selector.items():
        if key == "*":
            if "*" in values:
                continue
            return False
        actual = labels.get(key)
        if actual is None or ("*" not in values and actual not in values):
            return False
    return True


def labels_allowed(
    allow: Iterable[Selector], deny: Iterable[Selector], labels: Mapping[str, str]
) -> bool:
    """Allowed by at least one allow selector and by no deny selector."""
    if any(selector_matches(d, labels) for d in deny):
        return False
    return any(selector_matches(a, labels) for a in allow)


def kube_labels_allowed(roles: Sequence[Role], labels: Mapping[str, str]) -> bool:
    return labels_allowed(
        (r.kube_labels for r in roles), (r.kube_labels_deny for r in roles), labels
    )


def node_labels_allowed(roles: Sequence[Role], labels: Mapping[str, str]) -> bool:
    return labels_allowed(
        (r.node_labels for r in roles), (r.node_labels_deny for r in roles), labels
    )


@dataclass(frozen=True)
class Access:
    """What a set of roles grants together (union of allows, any deny wins)."""

    roles: tuple[str, ...]
    kube_groups: tuple[str, ...]
    kube_users: tuple[str, ...]
    logins: tuple[str, ...]
    ttl: timedelta
    require_session_mfa: bool
    allow_request: tuple[str, ...]
    review: tuple[str, ...]
    read_audit: bool
    admin: bool
    _defs: tuple[Role, ...]

    def cluster_allowed(self, labels: Mapping[str, str]) -> bool:
        return kube_labels_allowed(self._defs, labels)

    def node_allowed(self, labels: Mapping[str, str]) -> bool:
        return node_labels_allowed(self._defs, labels)

    def login_allowed(self, login: str) -> bool:
        return login in self.logins or "*" in self.logins

    def may_request(self, role: str) -> bool:
        return role in self.allow_request or "*" in self.allow_request

    def may_review(self, role: str) -> bool:
        return role in self.review or "*" in self.review


def _uniq(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def effective_access(names: Iterable[str], roles: Mapping[str, Role]) -> Access:
    """Combine roles; unknown names grant nothing. TTL is the shortest of the roles."""
    defs = tuple(roles[n] for n in _uniq(names) if n in roles)
    return Access(
        roles=tuple(r.name for r in defs),
        kube_groups=_uniq(g for r in defs for g in r.kube_groups),
        kube_users=_uniq(u for r in defs for u in r.kube_users),
        logins=_uniq(x for r in defs for x in r.logins),
        ttl=min((r.max_session_ttl for r in defs), default=timedelta(0)),
        require_session_mfa=any(r.require_session_mfa for r in defs),
        allow_request=_uniq(x for r in defs for x in r.allow_request),
        review=_uniq(x for r in defs for x in r.review),
        read_audit=any(r.read_audit or r.admin for r in defs),
        admin=any(r.admin for r in defs),
        _defs=defs,
    )


def roles_for_groups(groups: Iterable[str], mappings: Mapping[str, list[str]]) -> list[str]:
    """The roles the IdP groups map to, in mapping order, without repeats."""
    return list(_uniq(r for g in groups for r in mappings.get(g, [])))


def parse_roles(doc: Any, source: str = "roles") -> RolesFile:
    if not isinstance(doc, Mapping) or "roles" not in doc:
        raise ConfigError(f"{source}: expected a mapping with a `roles:` section")
    try:
        parsed = RolesFile.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: {loc}: {first['msg']}") from None
    for name, role in parsed.roles.items():
        role.name = name
    for group, names in parsed.group_mappings.items():
        for n in names:
            if n not in parsed.roles:
                raise ConfigError(f"{source}: group_mappings.{group}: unknown role {n!r}")
    return parsed


def roles_path(settings: Settings) -> Path:
    return settings.home_dir / ROLES_FILE


def load_roles_file(settings: Settings) -> RolesFile:
    """`$AUDITCAST_HOME/roles.yaml`, created from the shipped example on first use."""
    path = roles_path(settings)
    if not path.exists() and EXAMPLE_ROLES.exists():
        shutil.copyfile(EXAMPLE_ROLES, path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no roles file at {path}",
            hint="write one (see roles.example.yaml in the auditcast.access package)",
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_roles(doc, str(path))


def load_roles(settings: Settings) -> dict[str, Role]:
    return load_roles_file(settings).roles
