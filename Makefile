# Quick start: `make train` then `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/default
STAMP := $(VENV)/.requirements-installed

.PHONY: train test clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

train: $(STAMP)
	$(PY) launch/train.py --config=configs/default.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) workdir .pytest_cache
