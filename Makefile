# Quick start: `make train` then `make test`. Both create .venv on first use and install
# the pinned requirements and this package (editable) into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/default
STAMP := $(VENV)/.requirements-installed

.PHONY: train test clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(PY) launch/train.py --config=configs/default.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) workdir .pytest_cache *.egg-info
