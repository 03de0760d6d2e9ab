# bnlab: `make reproduce` runs every experiment and writes results/; `make test` runs the test suite.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= cpu
EXPERIMENTS ?= $(sort $(basename $(notdir $(wildcard configs/experiment/*.yaml))))
JOBS ?= 2
# confirmatory: fresh seeds, judged by the criteria frozen in configs/registration_$(SCALE).json (docs/method.md);
# exploratory: each experiment's own seeds, which design the criteria and choose the rates
STAGE ?= confirmatory

# Where the datasets are: BNLAB_DATA if set, else a sibling ../shared/data (this workplace), else ./data.
# The CIFAR-10 in shared/data is a byte-rebuilt, pixel-exact copy that fails torchvision's md5 check, so
# BNLAB_DATA_VERIFY defaults to false for that folder, however BNLAB_DATA names it.
SHARED_DATA := $(realpath ../shared/data)
ifeq ($(origin BNLAB_DATA), undefined)
  ifneq ($(SHARED_DATA),)
    export BNLAB_DATA := $(SHARED_DATA)
  endif
endif
ifneq ($(SHARED_DATA),)
  ifeq ($(realpath $(BNLAB_DATA)),$(SHARED_DATA))
    export BNLAB_DATA_VERIFY ?= false
  endif
endif

.PHONY: install test lint reproduce report bench freeze clean-runs $(EXPERIMENTS)

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# ruff, then mypy over bnlab and the launcher (pyproject.toml's [tool.mypy]): among others it checks that the
# stepping models keep to the `stepping.Stepper` Protocol they subclass
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

# $(call sweep,EXPERIMENT,WORKERS[,OVERRIDES]): one experiment's sweep, skipping finished runs; failed runs do not
# stop make. A confirmatory sweep of an experiment with chosen_rates_only trains only the frozen rates.
sweep = $(PY) -m bnlab.train experiment=$(1) scale=$(SCALE) stage=$(STAGE) hydra.launcher.n_jobs=$(2) \
  trainer.progress=false $(3) $(if $(filter confirmatory,$(STAGE)),$$($(PY) -m bnlab.registration overrides $(1) \
  --scale $(SCALE))) \
  || echo "[bnlab] sweep $(1) ended with an error (why: above); its failed runs are listed in the report"

# One experiment's sweep, then its figures and report rows.
$(EXPERIMENTS): install
	$(call sweep,$@,$(JOBS))
	$(PY) -m bnlab.report --scale $(SCALE)

# `make reproduce` trains the confirmatory seeds (100-104 in every experiment, then 105-109 in the experiments with an
# inconclusive cell, once) and ends by packing them into results/evidence_$(SCALE)_confirmatory.tar.xz (committed,
# beside the exploratory results/evidence_$(SCALE).tar.xz, so that a fresh clone's `make report` recomputes every
# number without training). `make reproduce STAGE=exploratory` retrains the exploratory seeds instead.
# It first checks that MNIST and CIFAR-10 are where the runs will look (`python -m bnlab.data`), so
# that missing data is one message rather than a failed sweep per experiment. It runs JOBS sweeps side by side,
# one worker each, longest first, so that the two cores stay busy to the end instead of idling through each
# sweep's last runs. The order is each experiment's last logged wall time (results/timing_$(SCALE).log; an
# experiment never timed goes first: `bnlab.sweeps.longest_first` says why). Expanded in the recipe, after
# `install` has made the environment that computes it.
SWEEP_ORDER = $(filter $(EXPERIMENTS),$(shell $(PY) -m bnlab.sweeps order --scale $(SCALE)))

# Its timing log block starts with a "[bnlab] make reproduce on <CPU>" line; bnlab.efficiency sums the
# "[bnlab] <experiment>: N s" lines after the last one (each sweep on one core) against the runs' FLOP floor.
reproduce: install
	$(PY) -m bnlab.data
	@$(PY) -m bnlab.progress --scale $(SCALE) stage=$(STAGE) & progress=$$!; \
	start=$$(date +%s); \
	echo "[bnlab] make reproduce on $$($(PY) -c 'from bnlab.runlog import cpu_name; print(cpu_name())'), $(JOBS) sweeps at a time, one thread each" | tee -a results/timing_$(SCALE).log; \
	$(MAKE) --no-print-directory -j$(JOBS) $(addprefix sweep-,$(SWEEP_ORDER)); \
	if [ "$(STAGE)" = confirmatory ]; then \
	  more=$$($(PY) -m bnlab.report --scale $(SCALE) --inconclusive | tail -1); \
	  echo "[bnlab] seeds 105-109 for the experiments with an inconclusive cell: $${more:-none}"; \
	  $(MAKE) --no-print-directory -j$(JOBS) $$(for e in $$more; do printf 'more-%s ' $$e; done) || true; \
	fi; \
	kill $$progress 2>/dev/null; \
	echo "[bnlab] all sweeps, $(JOBS) at a time: $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log
	$(PY) -m bnlab.report --scale $(SCALE)
	$(PY) -m bnlab.efficiency --scale $(SCALE) --stage $(STAGE)
	$(PY) -m bnlab.archive pack --scale $(SCALE) --stage $(STAGE)

sweep-%:
	@start=$$(date +%s); \
	$(call sweep,$*,1); \
	echo "[bnlab] $*: $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log

# The second stage of a confirmatory sweep: seeds 105-109 beside 100-104 (those are finished and skipped).
more-%:
	@start=$$(date +%s); \
	$(call sweep,$*,1,'seed=range(100,110)'); \
	echo "[bnlab] $* (seeds 105-109): $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log

# Freeze every criterion, the confirmatory seeds and the best rates chosen on the exploratory runs; commit the file
# alone, then `make reproduce`.
freeze: install
	$(PY) -m bnlab.registration freeze --scale $(SCALE)

bench: install
	$(PY) scripts/bench.py

report: install
	$(PY) -m bnlab.report --scale $(SCALE)
