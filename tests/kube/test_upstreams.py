"""The clusters file the gateway reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from auditcast.collectors.kube.upstreams import parse_clusters
from auditcast.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "kube" / "kube-clusters.example.yaml"


def test_clusters_parse_with_labels_credentials_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "gw.token").write_text("s3cret\n")
    doc = {
        "clusters": [
            {
                "name": "dev",
                "url": "https://10.0.0.1:6443/",
                "ca": "dev-ca.crt",
                "token_file": "gw.token",
                "labels": {"environment": "staging"},
            }
        ]
    }
    [dev] = parse_clusters(doc, tmp_path).values()
    assert dev.url == "https://10.0.0.1:6443" and dev.ca == tmp_path / "dev-ca.crt"
    assert dev.auth_headers() == {"Authorization": "Bearer s3cret"}
    assert dev.labels == {"environment": "staging"} and dev.identity == "auditcast-gateway"


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({}, "must have a `clusters:` list"),
        ({"clusters": [{"name": "a"}]}, "needs at least `name` and `url`"),
        ({"clusters": [{"name": "a", "url": "u"}, {"name": "a", "url": "u"}]}, "defined twice"),
        ({"clusters": [{"name": "a", "url": "u", "labels": ["x"]}]}, "labels must be a mapping"),
        ({"clusters": [{"name": "a", "url": "u", "token_file": "nope"}]}, "cannot read token_file"),
    ],
)
def test_bad_clusters_files_say_what_is_wrong(doc: dict, error: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_clusters(doc, tmp_path)


def test_the_shipped_example_is_a_valid_clusters_file(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for c in doc["clusters"]:  # point the credential files at something readable
        if "token_file" in c:
            (tmp_path / "t").write_text("x")
            c["token_file"] = str(tmp_path / "t")
    clusters = parse_clusters(doc, tmp_path)
    assert set(clusters) == {"staging", "production"}
    assert clusters["production"].labels == {"environment": "production"}
