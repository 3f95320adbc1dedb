"""Roles from YAML and the pure access decisions built on them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from auditcast.access.roles import (
    effective_access,
    load_roles_file,
    parse_roles,
    roles_for_groups,
)
from auditcast.errors import ConfigError
from auditcast.settings import Settings


@pytest.fixture
def shipped(tmp_path):
    return load_roles_file(Settings(home=tmp_path))


def test_example_roles_ship_and_map_idp_groups(shipped) -> None:
    assert set(shipped.roles) >= {"admin", "devrole", "contractor", "auditor"}
    assert roles_for_groups(["contractors"], shipped.group_mappings) == ["contractor"]
    assert roles_for_groups(["developers", "admins"], shipped.group_mappings) == [
        "devrole",
        "admin",
    ]


def test_devrole_reaches_staging_clusters_only(shipped) -> None:
    dev = effective_access(["devrole"], shipped.roles)
    assert dev.cluster_allowed({"environment": "staging"})
    assert not dev.cluster_allowed({"environment": "production"})
    assert not dev.cluster_allowed({})
    assert dev.kube_groups == ("devs",) and dev.ttl == timedelta(hours=1)


def test_contractor_has_no_access_but_may_request_devrole(shipped) -> None:
    c = effective_access(["contractor"], shipped.roles)
    assert not c.cluster_allowed({"environment": "staging"})
    assert not c.node_allowed({"environment": "staging"}) and c.logins == ()
    assert c.may_request("devrole") and not c.may_request("admin")
    assert not c.may_review("devrole")


def test_deny_wins_over_allow_and_ttl_is_the_shortest() -> None:
    roles = parse_roles(
        {
            "roles": {
                "wide": {"kube_labels": "*", "max_session_ttl": "8h"},
                "noprod": {
                    "kube_labels_deny": {"environment": "production"},
                    "max_session_ttl": "30m",
                },
            }
        }
    ).roles
    a = effective_access(["wide", "noprod"], roles)
    assert a.cluster_allowed({"environment": "staging"})
    assert not a.cluster_allowed({"environment": "production"})
    assert a.ttl == timedelta(minutes=30)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"roles": {"r": {"kube_groupz": ["x"]}}}, "roles.r.kube_groupz"),
        ({"roles": {"r": {"max_session_ttl": "forever"}}}, "max_session_ttl"),
        ({"roles": {"r": {"max_session_ttl": "3d"}}}, "max_session_ttl"),
        ({"roles": {}, "group_mappings": {"g": ["ghost"]}}, "unknown role 'ghost'"),
        ({"rolez": {}}, "roles:"),
    ],
)
def test_invalid_roles_say_where(doc, says) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_roles(doc, "roles.yaml")


def test_deny_spelled_either_way_denies() -> None:
    roles = parse_roles(
        {
            "roles": {
                "a": {"node_labels": "*", "deny_node_labels": {"env": ["prod", "dr"]}},
                "b": {"kube_labels": "*", "deny_kube_labels": {"env": "prod"}},
            }
        }
    ).roles
    assert not effective_access(["a"], roles).node_allowed({"env": "dr"})
    assert effective_access(["a"], roles).node_allowed({"env": "dev"})
    assert not effective_access(["b"], roles).cluster_allowed({"env": "prod"})
