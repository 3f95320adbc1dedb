"""Audit store (SQLite, Elasticsearch) and recording store."""
