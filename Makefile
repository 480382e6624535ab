# bus-nnunet: `make demo` sets up a virtual environment and runs the end-to-end demo;
# `make test` sets it up and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bus-nnunet-installed
PYTEST_ARGS ?=

.PHONY: install demo demo-quick test doctor clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	# the matched pair first, then everything else constrained to it (never an unpinned torch)
	$(PY) -m pip install -c constraints.txt torch torchvision
	$(PY) -m pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/bus-nnunet demo --out demo_output --overwrite

demo-quick: install
	$(VENV)/bin/bus-nnunet demo --out demo_output --overwrite --quick

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

doctor: install
	$(VENV)/bin/bus-nnunet doctor

clean:
	rm -rf demo_output build *.egg-info .pytest_cache
