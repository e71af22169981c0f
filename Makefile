# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo report federation-demo test lint dev validate docs clean bench bench-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# The project's `dagster` wrapper must win over dagster's own console script (deploy/dagster_cli.py).
	grep -q deploy.dagster_cli $(VENV)/bin/dagster || $(PY) -m pip install --quiet --no-deps --force-reinstall -e .
	touch $(STAMP)

demo: venv
	$(PY) -m synthetic.demo

# The study report (HTML and PDF in .state/reports) for the warehouse `make demo` built.
report: venv
	$(PY) -m synthetic.report

# Three synthetic FHIR hospitals, each with its own warehouse and Dagster instance, pooled by a coordinator
# through a local folder (.state/federation); prints the pooled and meta-analysed hazard ratios.
federation-demo: venv
	$(PY) -m synthetic.consortium

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

dev: venv
	$(PY) -m synthetic.demo --ui

docs: venv
	$(PY) -m deploy.docs

validate: venv
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

# fhiry (the comparison in benchmarks/ingest.py) needs pandas 3, so it lives in a venv of its own.
FHIRY_VENV := benchmarks/.fhiry-venv
bench-venv: $(FHIRY_VENV)/bin/python
$(FHIRY_VENV)/bin/python:
	$(PYTHON) -m venv $(FHIRY_VENV)
	$(FHIRY_VENV)/bin/pip install --quiet fhiry==5.2.2

bench: venv bench-venv
	$(PY) -m benchmarks.validation
	$(PY) -m benchmarks.ingest
	$(PY) -m benchmarks.statistics
	$(PY) -m benchmarks.cohort
	$(PY) -m benchmarks.hospital

clean:
	rm -rf .state .pytest_cache
