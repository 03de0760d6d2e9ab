# bnlab: `make reproduce` runs every experiment and writes results/; `make test` runs the test suite.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= cpu
EXPERIMENTS ?= $(sort $(basename $(notdir $(wildcard configs/experiment/*.yaml))))
JOBS ?= 2

# Where the datasets are: BNLAB_DATA if set, else a sibling ../shared/data (this workplace), else ./data.
# The CIFAR-10 in shared/data is a byte-rebuilt, pixel-exact copy that fails torchvision's md5 check.
ifeq ($(origin BNLAB_DATA), undefined)
  ifneq ($(wildcard ../shared/data),)
    export BNLAB_DATA := $(abspath ../shared/data)
    export BNLAB_DATA_VERIFY ?= false
  endif
endif

.PHONY: install test lint reproduce report bench clean-runs $(EXPERIMENTS)

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

# One experiment's sweep (skipping finished runs), then its figures and report rows.
$(EXPERIMENTS): install
	$(PY) -m bnlab.train experiment=$@ scale=$(SCALE) hydra.launcher.n_jobs=$(JOBS) trainer.progress=false \
	  || echo "[bnlab] sweep $@ had failing runs; they are listed in the report"
	$(PY) -m bnlab.report --scale $(SCALE)

reproduce: install
	@for e in $(EXPERIMENTS); do \
	  start=$$(date +%s); \
	  $(PY) -m bnlab.train experiment=$$e scale=$(SCALE) hydra.launcher.n_jobs=$(JOBS) trainer.progress=false \
	    || echo "[bnlab] sweep $$e had failing runs; they are listed in the report"; \
	  echo "[bnlab] $$e: $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log; \
	done
	$(PY) -m bnlab.report --scale $(SCALE)

bench: install
	$(PY) scripts/bench.py

report: install
	$(PY) -m bnlab.report --scale $(SCALE)
