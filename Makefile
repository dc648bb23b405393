# Two commands matter: `make serve` and `make test`. Both create .venv if missing and
# install exactly the pinned set in requirements/lock.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_FILES := $(wildcard protos/galactic/v1/*.proto protos/inference/*.proto)
GEN_DIR := clients/python
# The stub generator lives in its own venv, pinned to the protoc generation whose stubs run
# on every protobuf the client supports (requirements/protos.txt).
PROTO_VENV ?= .venv-protos
PROTO_PY := $(PROTO_VENV)/bin/python
PROTO_STAMP := $(PROTO_VENV)/.installed-stamp

.PHONY: serve test test-fast test-slow test-reproduce protos check-protos install lock bench clean

$(STAMP): requirements/lock.txt pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25"
	# -c pins every transitive dependency; torch==2.13.0 takes the local CPU wheel here.
	$(PY) -m pip install --quiet -c requirements/lock.txt -e clients/python -e ".[dev,federated]"
	touch $@

install: $(STAMP)

$(PROTO_STAMP): requirements/protos.txt
	test -x $(PROTO_PY) || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_PY) -m pip install --quiet -r requirements/protos.txt
	touch $@

serve: $(STAMP)
	$(VENV)/bin/galacticd serve $(ARGS)

# Two pytest workers (pytest-xdist): most tests wait on real daemons and child processes
# rather than computing, so two at a time on 2 cores roughly halve the wall time.
PYTEST_WORKERS ?= 2

test: $(STAMP) check-protos
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The shipped coordination checkpoint re-trained from its recipe, weights compared, and the
# demo LLM's recipe re-run to its first recorded step (5-6 min on a quiet 2-core machine since the 60-round recipe;
# CI runs it after `make test`).
test-reproduce: $(STAMP)
	GALACTIC_REPRODUCE_RECIPE=1 $(PY) -m pytest -q -n 2 tests/coordination/test_coord_training.py \
		tests/llm/test_llm_training.py -k reproduces

# Tests too long, or too bound to a timeout, for `make test` (GALACTIC_SLOW_TESTS=1): the
# compiled-decode engine with a cold inductor cache, a FLARE site frozen past a round timeout.
test-slow: $(STAMP)
	GALACTIC_SLOW_TESTS=1 $(PY) -m pytest -q -n 2 tests/llm/test_llm_lifecycle.py \
		tests/coordination/test_coord_federated_site_down.py -k "compiled or frozen"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Regenerate the stubs from protos/ (one generated copy, in the client distribution).
protos: $(PROTO_STAMP)
	$(PROTO_PY) protos/generate.py $(GEN_DIR)

# CI: the committed stubs must equal a fresh generation.
check-protos: $(PROTO_STAMP)
	$(PROTO_PY) protos/generate.py --check $(GEN_DIR)

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

bench: $(STAMP)
	$(PY) benchmarks/llm_serving.py --quick --json var/bench-llm.json
	$(PY) benchmarks/coordination.py --json var/bench-coordination.json

clean:
	rm -rf $(VENV) $(PROTO_VENV) var .pytest_cache
