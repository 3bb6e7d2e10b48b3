# Quick start: `make train` then `make test`. Both create .venv on first use and install
# the pinned requirements (with the [beam] extra's, so the tests of the Beam build run)
# and this package (editable) into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/default
STAMP := $(VENV)/.requirements-installed

.PHONY: train test test-tf clean

$(STAMP): requirements.txt requirements-beam.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-beam.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(PY) launch/train.py --config=configs/default.py --workdir=$(WORKDIR)

# --durations: CI's own log then says what the slowest tests cost on its runner.
test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf $(VENV) $(TF_VENV) workdir .pytest_cache *.egg-info

# The optional TF SavedModel export (the `tf` extra) in a venv of its own: tensorflow-cpu
# adds about 1.4 GB to the install, so `make test` leaves it out (its test skips there).
TF_VENV ?= .venv-tf

test-tf:
	test -x $(TF_VENV)/bin/python || $(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install --quiet -r requirements.txt -e '.[tf]'
	$(TF_VENV)/bin/python -m pytest -q tests/test_serving_e2e.py
