"""`auditcast topics`: create and list the pipeline's topics."""

from __future__ import annotations

import click

from auditcast.cli._util import json_option, print_json, run, settings
from auditcast.kafka import ensure_topics, resolve_bootstrap
from auditcast.topics import TOPICS, topic


@click.group()
def topics() -> None:
    """Create or list the Kafka topics auditcast uses."""


@topics.command("create")
def create() -> None:
    """Create every missing topic (idempotent)."""
    s = settings()
    created = run(ensure_topics(s))
    click.echo(f"created {len(created)} topic(s) on {resolve_bootstrap(s)}")
    for name in created:
        click.echo(f"  {name}")


@topics.command("ls")
@json_option
def ls(as_json: bool) -> None:
    """List the topic names this configuration uses."""
    s = settings()
    rows = [{"topic": topic(s, t.name), "compact": t.compact} for t in TOPICS]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        click.echo(f"{r['topic']}{'  (compact)' if r['compact'] else ''}")
