"""`make reproduce` on every core: shards of a sweep, the plan make runs, its simulation, the timing-log readers."""

import json
import shutil
import subprocess

import pytest

from bnlab import schedule, sweeps
from bnlab.config import REPO_ROOT
from bnlab.efficiency import core_seconds
from bnlab.schedule import Unit, simulate
from bnlab.sweeps import assign_shards, logged_seconds, parse_shard
from tests.conftest import run_cli


def test_the_simulation_is_list_scheduling():
    """Whenever a core is free it takes the first unit whose prerequisites have ended: f, ready at 1 s, before c."""
    units = [Unit("a", 1), Unit("b", 3), Unit("f", 1, ("a",)), Unit("c", 3), Unit("d", 3), Unit("e", 1)]
    assert {name: start for name, (start, _) in simulate(units, 2).items()} == {
        "a": 0, "b": 0, "f": 1, "c": 2, "d": 3, "e": 5}
    assert schedule.makespan(units, 2) == 6
    assert schedule.makespan(units, 6) == 3  # a core each: the longest unit
    chain = [Unit("x", 2), Unit("y", 3, ("x",)), Unit("z", 4, ("y",))]
    assert schedule.makespan(chain, 4) == 9  # a chain takes its length whatever the cores


def test_two_phases_wait_for_every_sweep_then_check_them_all_at_once():
    first, second = {"a": 100, "b": 60, "c": 30}, {"a": 100, "c": 40}
    units = schedule.two_phase_units(first, second)
    assert [u.name for u in units] == ["sweep-a", "sweep-b", "sweep-c", "check", "more-c", "more-a"]
    # a 0-100, b 0-60, c 60-90; the check 100-451; c's second stage 451-491, a's 451-551
    assert schedule.makespan(units, 2) == 100 + schedule.CHECK_ALL_S + 100


def test_the_plan_starts_each_second_stage_once_its_own_first_stage_is_done():
    first, second = {"a": 100, "b": 60, "c": 30}, {"a": 100, "c": 40}
    units = schedule.plan_units(["a", "b", "c"], first, second, {}, {})
    assert [u.name for u in units] == ["more-a", "more-c", "more-b", "sweep-a", "sweep-c", "sweep-b"]
    d = schedule.DECIDE_S
    assert [u.cost for u in units[:3]] == [d + 100, d + 40, d]  # each checks first; b has no second stage
    # a 0-100 beside c 0-30, whose second stage follows at once (30-79); then b 79-139; a's second stage 100-209
    b_start = 30 + d + 40
    assert {u: start for u, (start, _) in simulate(units, 2).items()} == {
        "sweep-a": 0, "sweep-c": 0, "more-c": 30, "sweep-b": b_start, "more-a": 100, "more-b": b_start + 60}
    assert schedule.makespan(units, 2) == 100 + d + 100 < schedule.makespan(schedule.two_phase_units(first, second), 2)


def test_a_shard_is_its_groups_share_of_the_sweep_beside_a_start_and_every_jobs_compose():
    sweep = schedule.Sweep(jobs=10, groups=[30.0, 10.0, 20.0, 40.0])
    assert sweep.shares(2) == [0.5, 0.5]  # 40 + 10 and 30 + 20
    fixed = schedule.PROCESS_S + 10 * schedule.COMPOSE_S
    assert sweep.shard_costs(200.0, 2) == [fixed + (200 - fixed) / 2] * 2
    assert sweep.shard_costs(200.0, 1) == [200.0]


def test_shards_cover_every_group_once_by_longest_processing_time():
    costs = [5.0, 4.0, 3.0, 3.0, 2.0, 1.0]
    # 5 to shard 0, 4 to 1, then each to the lighter: 3 to 1 (7), 3 to 0 (8), 2 to 1 (9), 1 to 0 (9)
    assert assign_shards(costs, 2) == [0, 1, 1, 0, 1, 0]
    assert assign_shards(costs, 2) == assign_shards(list(costs), 2)  # the same in every shard's process
    for n in (1, 3, 8):
        owner = assign_shards(costs, n)
        assert len(owner) == len(costs) and set(owner) <= set(range(n))  # each group in exactly one shard
    assert sorted(assign_shards(costs, 8)) == [0, 1, 2, 3, 4, 5]  # more shards than groups: some train nothing


@pytest.mark.parametrize("bad", ["4/4", "-1/4", "1/0", "a/b", "1", "1/4/2", "", "1 of 4"])
def test_a_bad_shard_is_refused_with_what_to_write(bad):
    with pytest.raises(ValueError, match=r"write i/n with 0 <= i < n"):
        parse_shard(bad)


def test_a_shard_string_is_read_as_i_of_n():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0/1 ") == (0, 1) and parse_shard(None) is None


def test_the_timing_log_readers_sum_a_sweeps_shards(tmp_path, monkeypatch):
    lines = ["[bnlab] fig1: 500 s", "[bnlab] make reproduce on B, 4 sweeps at a time, one thread each",
             "[bnlab] fig1 [shard 1/2]: 300 s", "[bnlab] dln: 40 s", "[bnlab] fig1 [shard 0/2]: 320 s",
             "[bnlab] fig1 (seeds 105-109) [shard 0/2]: 310 s", "[bnlab] dln (seeds 105-109): 45 s",
             "[bnlab] lr_sweep_cnn [shard 2/3]: 100 s",  # one of three logged (an interrupted reproduction)
             "[bnlab] all sweeps, 4 at a time: 700 s"]
    assert logged_seconds(lines) == {("fig1", False): 620, ("dln", False): 40, ("fig1", True): 620,
                                     ("dln", True): 45, ("lr_sweep_cnn", False): 300}
    # a shard logged again starts the next set; a whole sweep's line replaces its shards
    assert logged_seconds([*lines, "[bnlab] fig1 [shard 1/2]: 10 s"])[("fig1", False)] == 20
    assert logged_seconds([*lines, "[bnlab] fig1: 7 s"])[("fig1", False)] == 7
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "timing_cpu.log").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sweeps, "REPO_ROOT", tmp_path)
    assert sweeps.sweep_seconds("cpu") == {"fig1": 620, "dln": 40, "lr_sweep_cnn": 300}  # progress and order
    assert core_seconds(tmp_path / "results" / "timing_cpu.log") == 300 + 40 + 320 + 310 + 45 + 100  # efficiency


def test_a_second_stage_timed_under_load_counts_as_long_as_its_first():
    lines = ["[bnlab] make reproduce on A", "[bnlab] fig1: 600 s", "[bnlab] dln: 200 s",
             "[bnlab] dln (seeds 105-109): 210 s", "[bnlab] fig1 (seeds 105-109): 1500 s",
             "[bnlab] seeds 105-109 of fig1 beside test runs (their times above are inflated by that load)"]
    assert schedule.stage_seconds(lines) == ({"fig1": 600, "dln": 200}, {"dln": 210, "fig1": 600})


def test_on_the_logged_times_two_cores_split_nothing_and_sixteen_come_within_a_quarter_of_the_ideal():
    """The plans `make reproduce` would run after the last reproduction in results/timing_cpu.log (shards as the
    committed confirmatory runs group), simulated on its times."""
    first, second = schedule.stage_seconds(sweeps.timing_log("cpu"))
    names = sorted(first)
    ideal = (sum(first.values()) + sum(second.values())) / 16
    two = schedule.plan(names, "cpu", 2)
    assert all("." not in u.name for u in two)  # no shard: the two phases' sweeps, without the barrier
    assert schedule.makespan(two, 2) < schedule.makespan(schedule.two_phase_units(first, second), 2)
    sixteen = schedule.plan(names, "cpu", 16)
    assert any("." in u.name for u in sixteen)
    assert schedule.makespan(sixteen, 16) <= 1.25 * ideal


def test_make_chains_each_second_stage_to_its_first_and_trains_it_only_where_the_check_says(tmp_path):
    """The Makefile's rules as `make reproduce` runs them (CHAINED=1) on a plan's first-stage targets, with a
    stand-in for python that logs what it is asked and says fig1 alone has an undecided cell."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    shutil.copy(REPO_ROOT / "Makefile", tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / ".reproduce").mkdir()
    fake = tmp_path / "fakepy"
    fake.write_text('#!/bin/sh\ncase "$2" in\n  bnlab.train) echo "$*" >> calls.log;;\n'
                    '  bnlab.report) for a; do last=$a; done; [ "$last" = fig1 ] && echo fig1 || echo;;\nesac\n')
    fake.chmod(0o755)
    units = schedule.plan_units(["fig1", "dln"], {"fig1": 600, "dln": 60}, {"fig1": 600}, {"fig1": 2},
                                {"fig1": (schedule.Sweep(4, [1.0, 1.0]),) * 2})
    targets = [u.name for u in units if not u.deps]
    assert targets == ["sweep-fig1.0of2", "sweep-fig1.1of2", "sweep-dln"]
    r = subprocess.run(["make", "--no-print-directory", "-j3", *targets, "CHAINED=1", f"PY={fake}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 5 and sum("experiment=dln" in c for c in calls) == 1  # dln: decided on its first seeds
    for i in (0, 1):  # fig1's two stages, each in two shards
        assert sum("experiment=fig1" in c and f"hydra.launcher.shard={i}/2" in c for c in calls) == 2
    assert sum("experiment=fig1" in c and "seed=range(105,110)" in c for c in calls) == 2
    assert "[bnlab] dln: decided on seeds 100-104" in r.stdout
    logged = logged_seconds((tmp_path / "results" / "timing_cpu.log").read_text().splitlines())
    assert set(logged) == {("fig1", False), ("fig1", True), ("dln", False)}


@pytest.mark.slow
def test_two_shards_of_a_sweep_train_disjoint_whole_stacks_that_make_up_the_sweep(data_root, tmp_path):
    sweep = ["bnlab.train", "-m", f"data.root={data_root}", f"out_root={tmp_path}", "norm=none,batch", "seed=0,1",
             "hydra.launcher.n_jobs=1", "trainer.steps=20", "trainer.eval_every=10", "trainer.probe_every=10",
             "trainer.probe_size=50", "trainer.progress=false", "data.download=false"]
    runs = tmp_path / "cpu" / "adhoc"
    trained = []
    for i in (0, 1):
        before = {p.parent.name for p in runs.glob("*/summary.json")}
        r = run_cli([*sweep, f"hydra.launcher.shard={i}/2"])
        assert r.returncode == 0, r.stderr
        assert f"[bnlab] sweep of 2 runs (shard {i} of 2) as 1 job: 2 finished, 0 diverged, 0 failed" in r.stdout
        trained.append({p.parent.name for p in runs.glob("*/summary.json")} - before)
    assert len(trained[0]) == len(trained[1]) == 2 and not trained[0] & trained[1]
    for names in trained:  # one norm's stack of two seeds each: a shard splits the sweep between stacks
        assert len({name.split(",")[0] for name in names}) == 1
        assert all(json.loads((runs / name / "summary.json").read_text())["stack_size"] == 2 for name in names)
    whole = run_cli([*sweep])  # the sweep unsharded: its four jobs, all finished by the two shards
    assert "[bnlab] sweep of 4 runs as 2 jobs: 4 finished" in whole.stdout
    assert {p.parent.name for p in runs.glob("*/summary.json")} == trained[0] | trained[1]
    bad = run_cli([*sweep, "hydra.launcher.shard=2/2"], env_extra={"HYDRA_FULL_ERROR": "0"})
    assert bad.returncode != 0 and "hydra.launcher.shard=2/2 is not a shard of a sweep" in bad.stderr


@pytest.mark.slow
def test_the_check_of_one_experiment_answers_as_the_check_of_every_experiment(data_root, tmp_path, monkeypatch):
    """`report --inconclusive <experiment>` reads that experiment's confirmatory runs alone. Every cell reads
    undecided here (a smoke run decides nothing), so an experiment is named exactly where its runs were found and
    analysed: gamma_beta, trained below; not dln, which has none."""
    from bnlab import report
    from bnlab.claims import Cell

    common = [f"data.root={data_root}", "data.download=false", "data.verify=false", f"out_root={tmp_path}"]
    r = run_cli(["bnlab.train", "experiment=gamma_beta", "scale=smoke", "stage=confirmatory", "hydra/launcher=basic",
                 *common])
    assert r.returncode == 0, r.stderr[-2000:]
    monkeypatch.setattr(report, "undecided_cells", lambda finding, c: [Cell("inconclusive", None, 5)])
    assert report.inconclusive("smoke", common) == ["gamma_beta"]
    assert report.inconclusive("smoke", common, only=["gamma_beta"]) == ["gamma_beta"]
    assert report.inconclusive("smoke", common, only=["dln"]) == []


def test_the_plan_command_takes_the_experiments_after_its_options_as_the_makefile_passes_them():
    r = run_cli(["bnlab.sweeps", "plan", "--scale", "cpu", "--cores", "2", "--stage", "confirmatory", "dln", "fig1"])
    assert r.returncode == 0, r.stderr
    # these two alone: fig1's chain (613 + 1520 s logged) outlasts half their work, so it runs in two shards, first
    assert r.stdout.split() == ["sweep-fig1.0of2", "sweep-fig1.1of2", "sweep-dln"]
