"""The registration check on a small git history and a small table of confirmatory runs: it holds for runs trained
at or after the freeze with the frozen criteria, and fails when a criterion or a chosen rate changes after the
freeze, when a run predates it, or when a confirmatory seed is one an exploratory run used."""

import copy
import functools
import subprocess

import pandas as pd
import pytest

from bnlab.registration import at_or_after, check, differences, freeze_commit, registration
from bnlab.sweeps import experiment_config


def commit(repo, message: str) -> str:
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-am", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def history(tmp_path):
    """before -> freeze (adds the registration file) -> after; the frozen record of fig1's claims."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.email", "t@t"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.name", "t"], cwd=repo, check=True)
    (repo / "README").write_text("x")
    subprocess.run(["git", "add", "README"], cwd=repo, check=True)
    before = commit(repo, "before")
    (repo / "registration.json").write_text("{}")
    subprocess.run(["git", "add", "registration.json"], cwd=repo, check=True)
    freeze = commit(repo, "freeze")
    after = commit(repo, "after")
    frozen = registration({"fig1": experiment_config("fig1", "cpu")}, {"fig1": {"sel": [["none", 0.5]]}})
    assert freeze_commit(repo / "registration.json", repo) == freeze
    return {"repo": repo, "before": before, "freeze": freeze, "after": after, "frozen": frozen}


def runs(*rows) -> pd.DataFrame:
    return pd.DataFrame([{"git_sha": sha, "seed": seed} for sha, seed in rows])


def test_runs_after_the_freeze_with_the_frozen_criteria_pass(history):
    after = functools.partial(at_or_after, repo=history["repo"])
    table = runs((history["freeze"], 100), (history["after"], 101))
    assert check(history["frozen"], copy.deepcopy(history["frozen"]), table, history["freeze"], {0, 1, 2},
                 after) == []


def test_a_criterion_changed_after_the_freeze_fails_the_check(history):
    after = functools.partial(at_or_after, repo=history["repo"])
    now = copy.deepcopy(history["frozen"])
    now["criteria"]["fig1"]["I1_faster"]["resolution"] *= 2
    now["rates"]["fig1"]["sel"] = [["none", 2.0]]
    problems = check(history["frozen"], now, runs((history["after"], 100)), history["freeze"], {0}, after)
    assert len(problems) == 2
    assert problems[0].startswith("changed after the freeze: criteria.fig1.I1_faster.resolution")
    assert "rates.fig1.sel" in problems[1]


def test_runs_before_the_freeze_and_reused_seeds_fail_the_check(history):
    after = functools.partial(at_or_after, repo=history["repo"])
    table = runs((history["before"], 100), (history["after"], 2))
    problems = check(history["frozen"], history["frozen"], table, history["freeze"], {0, 1, 2}, after)
    assert problems == [f"1 confirmatory runs trained at {history['before'][:10]}, not at or after the freeze",
                        "confirmatory runs on seeds an exploratory run used: [2]"]
    assert check(None, history["frozen"], table, None, set()) == ["no committed registration: criteria were never "
                                                                  "frozen"]


def test_differences_name_every_changed_path():
    assert differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == \
        ["a.c: 2 -> 3", "a.d: (absent) -> 4"]


def test_the_confirmatory_seeds_get_the_rates_the_exploratory_seeds_chose():
    """best_lr records its choice on the exploratory runs; within the frozen rates it returns that choice on runs
    whose own best rate differs, and a choice never frozen is refused."""
    from bnlab.analysis import RateNotFrozen, best_lr, chosen_rates

    def runs_at(best: float, seeds) -> pd.DataFrame:
        return pd.DataFrame([{"norm.name": "batch", "optim.lr": lr, "seed": s, "status": "finished",
                              "final_test_acc": 0.9 if lr == best else 0.5, "model.width": 100}
                             for lr in (0.1, 1.0) for s in seeds])

    record: dict = {}
    with chosen_rates(record=record):
        assert best_lr(runs_at(0.1, range(3)), "norm.name") == {"batch": 0.1}
    with chosen_rates(frozen=record):
        assert best_lr(runs_at(1.0, range(100, 105)), "norm.name") == {"batch": 0.1}  # not its own best, 1.0
        with pytest.raises(RateNotFrozen):
            best_lr(runs_at(1.0, range(100, 105)).assign(**{"model.width": 200}), "norm.name")
    assert best_lr(runs_at(1.0, range(100, 105)), "norm.name") == {"batch": 1.0}  # outside: chosen on the runs


@pytest.mark.slow
def test_a_confirmatory_sweep_trains_fresh_seeds_apart_and_chooses_nothing_itself(data_root, tmp_path):
    """stage=confirmatory trains seeds 100-104 under <out_root>/confirmatory/<scale>; with no registration for the
    scale, the report says so at its top and a claim that needs a best rate is not testable (the confirmatory
    seeds never choose their own rate)."""
    import json

    from tests.conftest import run_cli

    common = [f"data.root={data_root}", "data.download=false", "data.verify=false", f"out_root={tmp_path / 'runs'}"]
    r = run_cli(["bnlab.train", "experiment=gamma_beta", "scale=smoke", "stage=confirmatory", "hydra/launcher=basic",
                 *common])
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = list((tmp_path / "runs" / "confirmatory" / "smoke" / "gamma_beta").glob("*/summary.json"))
    assert {json.loads(p.read_text())["seed"] for p in summaries} == set(range(100, 105))
    assert not (tmp_path / "runs" / "smoke").exists()
    report = run_cli(["bnlab.report", "--scale", "smoke", "--out-dir", str(tmp_path / "report"), *common])
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "report" / "REPORT.md").read_text()
    page = (tmp_path / "report" / "report" / "gamma_beta.md").read_text()
    assert "- no committed registration: criteria were never frozen" in text
    assert "not testable: its best rate was not frozen ('no choice for norm.affine among these runs')" in page


def test_runs_git_cannot_place_fail_the_check(history):
    after = functools.partial(at_or_after, repo=history["repo"])
    table = runs((history["after"], 100), ("f" * 40, 101))
    problems = check(history["frozen"], history["frozen"], table, history["freeze"], set(), after)
    assert problems == [f"1 confirmatory runs trained at {'f' * 10}, which git cannot place against the freeze"]


def test_the_frozen_record_is_the_committed_one(history):
    from bnlab.registration import committed

    path = history["repo"] / "registration.json"
    path.write_text('{"edited": true}')  # after the freeze, uncommitted
    assert committed(path, history["freeze"], history["repo"]) == {}


def test_a_run_still_training_is_no_problem_and_a_finished_one_without_a_commit_is(history):
    after = functools.partial(at_or_after, repo=history["repo"])
    table = pd.DataFrame([{"git_sha": history["after"], "seed": 100, "status": "finished"},
                          {"git_sha": float("nan"), "seed": 101, "status": "incomplete"}])  # no summary yet
    assert check(history["frozen"], history["frozen"], table, history["freeze"], set(), after) == []
    table.loc[1, "status"] = "finished"
    assert check(history["frozen"], history["frozen"], table, history["freeze"], set(), after) == [
        "1 confirmatory runs trained at an unrecorded commit, which git cannot place against the freeze"]
