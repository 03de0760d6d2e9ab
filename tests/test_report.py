"""Reading run directories back (runlog) and the verdict logic, on hand-made run directories."""

import json
import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bnlab import runlog
from bnlab.analysis import best_lr, layer_cells, moment_change, ratio, steps_to
from bnlab.config import run_identity
from bnlab.sweeps import experiment_config, in_sweep, job_identities, job_name, sweep_jobs


def fake_run(root, name, lr, norm, seed, status, acc=None, curve=()):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(OmegaConf.to_yaml({"optim": {"lr": lr}, "norm": {"name": norm}, "seed": seed}))
    if status != "incomplete":
        (d / "summary.json").write_text(json.dumps({"status": status, "final_test_acc": acc, "seed": seed}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "test_acc": a}) + "\n" for s, a in curve))
    return d


@pytest.fixture
def sweep(tmp_path):
    fake_run(tmp_path, "a", 0.1, "none", 0, "finished", 0.90, [(0, 0.1), (100, 0.8), (200, 0.9)])
    fake_run(tmp_path, "b", 0.1, "none", 1, "finished", 0.92)
    fake_run(tmp_path, "c", 1.0, "none", 0, "diverged")
    fake_run(tmp_path, "d", 1.0, "none", 1, "finished", 0.99)
    fake_run(tmp_path, "e", 1.0, "batch", 0, "failed")
    fake_run(tmp_path, "f", 1.0, "batch", 1, "incomplete")
    (tmp_path / "g").mkdir()  # Hydra made it, the job never started: no config, not a run
    return tmp_path


def test_runlog_lists_every_run_with_its_status(sweep):
    runs = runlog.runs(sweep)
    assert len(runs) == 6
    assert runs.set_index(runs.path.str[-1]).status.to_dict() == {
        "a": "finished", "b": "finished", "c": "diverged", "d": "finished", "e": "failed", "f": "incomplete"}
    assert runs["optim.lr"].tolist() == [0.1, 0.1, 1.0, 1.0, 1.0, 1.0]


def test_best_lr_counts_a_diverged_seed_as_chance(sweep):
    runs = runlog.runs(sweep)
    runs = runs[runs["norm.name"] == "none"]
    # lr 1.0: median of (chance 0.1, 0.99) = 0.545 < lr 0.1: median of (0.90, 0.92) = 0.91
    assert best_lr(runs, "norm.name") == {"none": 0.1}


def test_steps_to_target_and_ratios():
    curve = pd.DataFrame({"step": [0, 100, 200], "test_acc": [0.1, 0.8, 0.9]})
    assert steps_to(curve, 0.8) == 100 and math.isinf(steps_to(curve, 0.95))
    assert steps_to(curve, 0.85) == pytest.approx(150)  # the crossing between two evaluations, not the next evaluation
    assert ratio(100, 400) == 0.25 and ratio(100, math.inf) == 0.0
    assert math.isinf(ratio(math.inf, 100)) and math.isnan(ratio(math.inf, math.inf))


def test_moment_changes_pair_runs_layer_by_layer(tmp_path):
    rows = {"none": [(0.4, 2.0), (0.2, 4.0), (0.3, 6.0)], "lp2": [(0.01, 1.0), (0.03, 3.0), (0.02, 2.0)]}
    for norm, changes in rows.items():
        d = fake_run(tmp_path, norm, 0.1, norm, 0, "finished")
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "dmean_L0": m, "dvar_L0": v, "dmean_L1": 2 * m})
                                                 + "\n" for s, (m, v) in enumerate(changes)))
    runs = runlog.runs(tmp_path)
    assert moment_change(runs.iloc[1]) == {0: 0.3, 1: 0.6}  # medians over steps, per layer
    assert moment_change(runs.iloc[1], moment="var") == {0: 4.0}
    cells = layer_cells(runs, "lp2", "none", moment_change)
    assert cells == {"layer 1": [pytest.approx(0.02 / 0.3)], "layer 2": [pytest.approx(0.04 / 0.6)]}
    assert layer_cells(runs, "lp2", "none", lambda r: moment_change(r, moment="var")) == {"layer 1": [0.5]}


def test_sweep_jobs_expand_as_hydra_and_name_run_directories():
    jobs, excluded = sweep_jobs("fig1", "cpu")
    assert len(jobs) == 2 * 4 * 3  # norm x learning rate x seed, as configs/experiment/fig1.yaml sweeps them
    job = ("norm=batch", "optim.lr=0.5", "seed=2", "experiment=fig1", "scale=cpu", "trainer.progress=False")
    assert in_sweep(job_name(job, excluded), jobs)  # where a run is read from and how it reports do not name it
    assert not in_sweep(job_name((*job, "trainer.steps=1000"), excluded), jobs)  # an exploratory run beside the sweep
    assert not in_sweep(job_name(("norm=batch", "optim.lr=0.3", "seed=2"), excluded), jobs)  # another grid
    assert in_sweep(job_name(None, excluded), jobs)  # no record of its overrides: kept
    # an override given to the report replaces the param of its key, as it does for the sweep
    jobs, excluded = sweep_jobs("fig1", "cpu", ["norm=batch", "trainer.steps=1000"])
    assert len(jobs) == 4 * 3 and in_sweep(job_name((*job, "trainer.steps=1000"), excluded), jobs)
    # a sweep override, as `python -m bnlab.report ... 'seed=range(5,10)'` gives it: it names the jobs
    jobs, _ = sweep_jobs("fig1", "cpu", ["seed=range(5,10)"])
    assert len(jobs) == 2 * 4 * 5 and frozenset({"norm=batch", "optim.lr=0.5", "seed=9"}) in jobs
    assert experiment_config("fig1", "cpu", ["seed=range(5,10)", "trainer.steps=7"]).trainer.steps == 7


@pytest.mark.parametrize("name", ["lr_sweep_cnn", "dlbook_chain"])
def test_job_identities_are_those_of_the_jobs_composed_one_by_one(name):
    """The report's shortcut (one compose per choice of config groups, the other overrides set on a copy) gives
    every job the identity that `train` computes from the job's own compose: groups (data, norm) and keys
    (model.depth, model.activation, optim.lr, seed), an int given for a float included."""
    jobs, _ = sweep_jobs(name, "smoke")
    int_lr = frozenset({"norm=batch", "optim.lr=1", "seed=0"})  # an int for a float, as a command line may give
    fast = job_identities(name, "smoke", jobs | {int_lr})
    assert fast == {job: run_identity(experiment_config(name, "smoke", sorted(job))) for job in jobs | {int_lr}}
    assert len({fast[job] for job in jobs}) == len(jobs)  # and no two of the sweep's jobs share one


def test_progress_counts_summaries_and_weighs_runs_by_their_timed_cost(tmp_path, monkeypatch):
    from bnlab import sweeps
    from bnlab.progress import done_by_experiment, line, run_costs

    for i, name in enumerate(("a", "b", "c")):
        (tmp_path / "fig1" / name).mkdir(parents=True)
        if i < 2:
            (tmp_path / "fig1" / name / "summary.json").write_text("{}")
    assert done_by_experiment(tmp_path, ["fig1", "dln"]) == {"fig1": 2, "dln": 0}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "timing_cpu.log").write_text(
        "[bnlab] fig1: 900 s\n[bnlab] fig1: 600 s\n[bnlab] fig1 (seeds 105-109): 50 s\n[bnlab] dln: 40 s\n")
    monkeypatch.setattr(sweeps, "REPO_ROOT", tmp_path)
    # the last first-stage time over today's jobs; an untimed experiment at the mean of the timed ones
    assert run_costs({"fig1": 20, "dln": 40, "cifar": 10}, sweeps.sweep_seconds("cpu")) == {
        "fig1": 30.0, "dln": 1.0, "cifar": 15.5}
    assert run_costs({"fig1": 20}, sweeps.sweep_seconds("smoke")) == {"fig1": 1.0}  # no timing log
    assert line(2, 10, 120.0, 480.0) == "[bnlab] 2 / 10 runs done, 2 min elapsed, about 8 min left"
    assert line(0, 10, 5.0, None) == "[bnlab] 0 / 10 runs done, 0 min elapsed"


def test_the_report_goes_to_wandb_as_one_artifact(tmp_path, monkeypatch):
    from bnlab.report import log_artifact

    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "figures").mkdir()
    (tmp_path / "REPORT.md").write_text("# report\n")
    (tmp_path / "figures" / "fig1_a.png").write_bytes(b"png")
    log_artifact(tmp_path, "smoke", "offline")
    import wandb

    wandb.teardown()  # the service writes the offline record in the background until it is shut down
    [record] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"bnlab-report-smoke" in data and b"REPORT.md" in data and b"figures/fig1_a.png" in data


def test_claims_are_grouped_by_the_section_their_experiment_declares():
    """The report and the README list claims under their experiment config's `section:`: the papers, the
    small-batch normalisers together, and the write-up's own questions; a section the report does not have is an
    error that lists the ones it has."""
    from bnlab.config import ConfigError
    from bnlab.report import SECTIONS, by_section
    from bnlab.sweeps import experiment_names

    groups = dict((name, group) for group, name in
                  by_section({n: experiment_config(n, "smoke") for n in experiment_names()}))
    assert set(groups) == set(experiment_names()) and set(groups.values()) <= set(SECTIONS)
    assert groups["outside_gradient"] == "Questions from the write-up" and groups["non_iid"] == groups["layer_vs_batch"]
    assert groups["fig1"] == "Ioffe & Szegedy 2015"
    with pytest.raises(ConfigError, match=r"fig1 \('Ioffe 2015'\).*'Ioffe & Szegedy 2015', 'Santurkar et al. 2018'"):
        by_section({"fig1": OmegaConf.create({"section": "Ioffe 2015"})})


def test_an_undeclared_finding_fails_the_analysis_and_a_missing_one_says_so(tmp_path, monkeypatch):
    """A finding whose claim id the config does not declare fails the experiment's analysis (every claim reads
    'the analysis failed', naming the experiment and the id; the report lists it among the failed analyses);
    a declared claim the analysis returns nothing for reads 'analysis returned no finding'."""
    import sys
    import types

    from bnlab.claims import Finding
    from bnlab.report import FAILED, NO_FINDING, analyse

    cfg = OmegaConf.create({"claims": {"kept": {}, "forgotten": {}}})
    runs = pd.DataFrame({"status": ["finished"], "seed": [0]})
    returned: list = []
    module = types.ModuleType("bnlab.experiments.contract")
    module.analyze = lambda ctx: returned
    monkeypatch.setitem(sys.modules, "bnlab.experiments.contract", module)

    returned[:] = [Finding("kept", [1.0, 2.0])]
    findings, _ = analyse("contract", cfg, runs, tmp_path)
    assert list(findings) == ["kept", "forgotten"] and findings["kept"].values == [1.0, 2.0]
    assert findings["forgotten"].untestable == {"": NO_FINDING}

    returned[:] = [Finding("kept", [1.0, 2.0]), Finding("kpet", [3.0, 4.0])]
    findings, _ = analyse("contract", cfg, runs, tmp_path)
    assert list(findings) == ["kept", "forgotten"]
    for finding in findings.values():
        why = finding.untestable[""]
        assert why.startswith(FAILED) and "experiments/contract.py" in why and "kpet" in why, why


def test_a_run_that_predates_a_config_key_reads_as_its_default(data_root, tmp_path):
    """A key is added with a default that keeps the old behaviour, so an older run's config without it (here
    norm.last_layers and model.residual) reads as having the default, in the runs table and when rebuilt."""
    from tests.conftest import make_cfg

    cfg = OmegaConf.to_container(make_cfg(data_root, tmp_path, ["norm=batch"]), resolve=True)
    del cfg["norm"]["last_layers"], cfg["model"]["residual"]
    run = tmp_path / "sweep" / "norm=batch"
    run.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run / runlog.CONFIG)
    rebuilt = runlog.run_config(run)
    assert (rebuilt.norm.last_layers, rebuilt.model.residual, rebuilt.norm.name) == (0, False, "batch")
    row = runlog.runs(tmp_path / "sweep").iloc[0]
    assert (row["norm.last_layers"], row["model.residual"], row["norm.name"]) == (0, False, "batch")


def test_make_reproduce_starts_the_longest_chains_first_by_the_timing_log(tmp_path, monkeypatch):
    """The order comes from each experiment's last logged wall times, its first stage and its second (another
    sweep, logged apart); an experiment never timed goes first, since it may be the longest."""
    from bnlab import schedule, sweeps

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "timing_cpu.log").write_text(
        "[bnlab] fig1: 100 s\n[bnlab] dln: 50 s\n[bnlab] fig1: 10 s\n[bnlab] dln (seeds 105-109): 999 s\n"
        "[bnlab] cifar: 30 s\n[bnlab] all sweeps, 2 at a time: 180 s\n")
    monkeypatch.setattr(sweeps, "REPO_ROOT", tmp_path)
    assert sweeps.sweep_seconds("cpu") == {"fig1": 10, "dln": 50, "cifar": 30}
    first, second = schedule.stage_seconds(sweeps.timing_log("cpu"))
    units = schedule.plan_units(["cifar", "dln", "fig1", "new_one"], first, second, {}, {})
    assert [u.name for u in units if not u.deps] == ["sweep-new_one", "sweep-dln", "sweep-cifar", "sweep-fig1"]
