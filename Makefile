.PHONY: up test bench lint fmt

up:
	bash scripts/up.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bootstrap.sh && .venv/bin/auditcast bench

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

fmt:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
