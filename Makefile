.PHONY: help demo test lint bench docs
help:   ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'
demo:   ## the example app on embedded defaults (SQLite + embedded Mongo-wire server)
	scripts/demo
test:   ## install servers and deps, lint, type-check, run the whole suite (newest + lowest deps)
	scripts/test
lint:   ## ruff and mypy --strict only
	scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/mypy --strict connman
bench:  ## the full benchmark suite on throwaway servers
	scripts/bootstrap --servers && .venv/bin/connman bench
docs:   ## regenerate docs/mapping.md and docs/configuration.md from the code
	scripts/bootstrap && .venv/bin/python scripts/docs.py
