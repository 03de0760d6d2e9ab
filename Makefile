# bnlab: `make reproduce` runs every experiment and writes results/; `make test` runs the test suite.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= cpu
EXPERIMENTS ?= $(sort $(basename $(notdir $(wildcard configs/experiment/*.yaml))))
# The sweeps (or shards of one) `make reproduce` runs at a time, one single-thread process each: one per usable core
JOBS ?= $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
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
# that missing data is one message rather than a failed sweep per experiment. Then it runs JOBS single-thread sweeps
# at a time: every experiment's first stage (sweep-%), the longest chains of both stages first, each experiment's
# second stage (more-%) starting as soon as its own first stage has ended. An experiment that would outlast the rest
# runs in shards (sweep-fig1.0of2, sweep-fig1.1of2). `python -m bnlab.sweeps plan` chooses the shards and the order
# from the last reproduction's logged times; bnlab/schedule.py says why, and `python -m bnlab.sweeps simulate`
# compares the plan with the two phases it replaced.
# Its timing log block starts with a "[bnlab] make reproduce on <CPU>" line; bnlab.efficiency sums the sweeps' and
# shards' "[bnlab] <experiment>...: N s" lines after the last one (each on one core) against the runs' FLOP floor.
reproduce: install
	$(PY) -m bnlab.data
	rm -rf .reproduce && mkdir .reproduce
	$(PY) -m bnlab.sweeps plan --scale $(SCALE) --cores $(JOBS) --stage $(STAGE) $(EXPERIMENTS) > .reproduce/plan
	@$(PY) -m bnlab.progress --scale $(SCALE) stage=$(STAGE) & progress=$$!; \
	start=$$(date +%s); \
	echo "[bnlab] make reproduce on $$($(PY) -c 'from bnlab.runlog import cpu_name; print(cpu_name())'), $(JOBS) sweeps at a time, one thread each" | tee -a results/timing_$(SCALE).log; \
	$(MAKE) --no-print-directory -j$(JOBS) $$(cat .reproduce/plan) $(if $(filter confirmatory,$(STAGE)),CHAINED=1) || true; \
	kill $$progress 2>/dev/null; \
	echo "[bnlab] all sweeps, $(JOBS) at a time: $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log
	$(PY) -m bnlab.report --scale $(SCALE)
	$(PY) -m bnlab.efficiency --scale $(SCALE) --stage $(STAGE)
	$(PY) -m bnlab.archive pack --scale $(SCALE) --stage $(STAGE)

# In sweep-% and more-%, the stem names an experiment and, for a shard, which one: sweep-lr_sweep_cnn.1of4 is shard
# 1 of 4 (hydra.launcher.shard=1/4) of lr_sweep_cnn's sweep, logged as "[bnlab] lr_sweep_cnn [shard 1/4]: N s".
experiment = $(basename $*)
shard = $(subst of,/,$(patsubst .%,%,$(suffix $*)))
shard_args = $(if $(shard),hydra.launcher.shard=$(shard))
shard_tag = $(if $(shard), [shard $(shard)])
shards = $(or $(lastword $(subst /, ,$(shard))),1)
second_stage = $(if $(shard),$(foreach i,$(shell seq 0 $$(($(shards) - 1))),more-$(experiment).$(i)of$(shards)),more-$(experiment))

# One experiment's first-stage sweep on one worker, or a shard of it. In `make reproduce` (CHAINED=1) the last of
# an experiment's first-stage units to end (.reproduce/ counts them) goes on with its second stage, every shard of
# it, in a make of its own whose jobs take cores from the same -j pool as they free.
sweep-%:
	@start=$$(date +%s); \
	$(call sweep,$(experiment),1,$(shard_args)); \
	echo "[bnlab] $(experiment)$(shard_tag): $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log
	@if [ -n "$(CHAINED)" ]; then \
	  mkdir -p .reproduce/$(experiment) && touch .reproduce/$(experiment)/$*; \
	  if [ $$(ls .reproduce/$(experiment) | wc -l) -eq $(shards) ] && mkdir .reproduce/$(experiment).more 2>/dev/null; \
	  then $(MAKE) --no-print-directory $(second_stage); fi; \
	fi

# The second stage of a confirmatory sweep: seeds 105-109 (only those: a shard then shares their training, not
# finished runs of seeds 100-104). In `make reproduce` (CHAINED=1) it first asks whether the first seeds left a cell
# of the experiment undecided (~10 s; each shard asks for itself) and trains only if so; a check that fails trains.
more-%:
	@if [ -n "$(CHAINED)" ]; then \
	  out=$$($(PY) -m bnlab.report --scale $(SCALE) --inconclusive $(experiment)) \
	    || { echo "[bnlab] the check of $(experiment) failed (above): its seeds 105-109 train"; out=$(experiment); }; \
	  if [ -z "$$(printf '%s\n' "$$out" | tail -1)" ]; then \
	    echo "[bnlab] $(experiment)$(shard_tag): decided on seeds 100-104"; exit 0; fi; \
	fi; \
	start=$$(date +%s); \
	$(call sweep,$(experiment),1,'seed=range(105,110)' $(shard_args)); \
	echo "[bnlab] $(experiment) (seeds 105-109)$(shard_tag): $$(( $$(date +%s) - start )) s" | tee -a results/timing_$(SCALE).log

# Freeze every criterion, the confirmatory seeds and the best rates chosen on the exploratory runs; commit the file
# alone, then `make reproduce`.
freeze: install
	$(PY) -m bnlab.registration freeze --scale $(SCALE)

bench: install
	$(PY) scripts/bench.py

report: install
	$(PY) -m bnlab.report --scale $(SCALE)
