# Convenience targets; the scripts are the source of truth (see README.md).
.PHONY: run test lint typecheck bench
run:
	sh scripts/run.sh
test:
	sh scripts/test.sh
lint:
	.venv/bin/ruff check engine tests bench
typecheck:
	.venv/bin/mypy engine
bench:
	.venv/bin/python bench/bench_cstore.py
