# Two commands matter: `make serve` and `make test`. Both create .venv if missing and
# install exactly the pinned set in requirements/lock.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_FILES := $(wildcard protos/galactic/v1/*.proto)
GEN_DIR := clients/python

.PHONY: serve test test-fast protos check-protos install lock bench clean

$(STAMP): requirements/lock.txt pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25"
	# -c pins every transitive dependency; torch==2.13.0 takes the local CPU wheel here.
	$(PY) -m pip install --quiet -c requirements/lock.txt -e clients/python -e ".[dev,federated]"
	touch $@

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/galacticd serve $(ARGS)

test: $(STAMP) check-protos
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Regenerate the stubs from protos/ (one generated copy, in the client distribution).
protos: $(STAMP)
	$(PY) protos/generate.py $(GEN_DIR)

# CI: the committed stubs must equal a fresh generation.
check-protos: $(STAMP)
	$(PY) protos/generate.py --check $(GEN_DIR)

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

bench: $(STAMP)
	$(PY) benchmarks/llm_serving.py --quick --json var/bench-llm.json
	$(PY) benchmarks/coordination.py --json var/bench-coordination.json

clean:
	rm -rf $(VENV) var .pytest_cache
