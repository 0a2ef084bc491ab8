# The only two set-up commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# HOGX_COMPILE=0: the core modules run as plain Python (setup.py); each choice has its own stamp
HOGX_COMPILE ?= 1
export HOGX_COMPILE
STAMP := $(VENV)/.installed-stamp-compile$(HOGX_COMPILE)
# The compiled modules (setup.py) are rebuilt when any module of the package changes, not only their own
# sources: mypyc builds in the types and Final constants of what they import (exchange/__init__.py refuses,
# at import, a build older than its own source).
COMPILE_INPUTS := $(shell find exchange -name '*.py')

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml setup.py $(COMPILE_INPUTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	rm -f hogx_core__mypyc.*.so $$(find exchange -name '*.so')  # builds of modules no longer compiled go too
	rm -f $(VENV)/.installed-stamp-compile*
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gateway serve --demo --simulate --request-log .hogx/requests.log

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.matching --ops 1000000 --json

clean:
	rm -rf $(VENV) .hogx .pytest_cache .hypothesis build
	find . -path ./.venv -prune -o -name '*.so' -print -delete
