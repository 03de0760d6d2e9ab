"""The SLURM path against a real slurmctld and slurmd (tests/slurm_cluster.py): where runs land, what the report
says, what a rerun submits, how a cancelled job resumes, and that a bad config submits nothing."""

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bnlab.config import REPO_ROOT
from tests.conftest import cli_environment, run_cli
from tests.slurm_cluster import missing, single_node_cluster

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no SLURM here: {missing()}")

# fig1 at smoke scale: 4 runs, two stacks of two (norm=none and norm=batch, each at two learning rates)
SWEEP = ["bnlab.train", "experiment=fig1", "scale=smoke", "data.download=false", "data.verify=false"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.poll_s=0.5", "hydra.launcher.timeout_min=10"]
MEASURED = {"train_time", "train_time_s", "probe_time_s", "steps_per_s", "out_root"}  # differ between any two runs
RUN_FILES = ("metrics.jsonl", "activations.jsonl", "probes.jsonl", "summary.json", "config.yaml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    with single_node_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def slurm_sweep(data_root: Path, out_root: Path, extra: Sequence[str]) -> list[str]:
    return [*SWEEP, *SLURM, f"data.root={data_root}", f"out_root={out_root}", *extra]


def sweep(cluster: dict, data_root: Path, out_root: Path, *extra: str, timeout: int = 240):
    return run_cli(slurm_sweep(data_root, out_root, extra), env_extra={"SLURM_CONF": cluster["SLURM_CONF"]},
                   timeout=timeout)


def jobs_submitted(folder: Path) -> set[str]:
    """The SLURM job ids submitit made a folder for (one per array task) under a sweep's .submitit/."""
    return {p.name for p in (folder / ".submitit").glob("[0-9]*_[0-9]*")} if (folder / ".submitit").exists() else set()


def run_record(run: Path) -> dict:
    """Every file a run wrote, less what is measured rather than computed (times, speeds, where it was written)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in MEASURED}
        return value
    record = {}
    for name in RUN_FILES:
        text = (run / name).read_text()
        if name.endswith(".jsonl"):
            record[name] = [strip(json.loads(line)) for line in text.splitlines()]
        elif name.endswith(".json"):
            record[name] = strip(json.loads(text))
        else:
            record[name] = [line for line in text.splitlines() if not line.startswith("out_root:")]
    return record


def report(out_root: Path, data_root: Path, out_dir: Path) -> str:
    r = run_cli(["bnlab.report", "--scale", "smoke", "--out-dir", str(out_dir), f"out_root={out_root}",
                 f"data.root={data_root}"])
    assert r.returncode == 0, r.stderr
    return (out_dir / "REPORT.md").read_text()


def test_a_slurm_sweep_submits_one_job_per_stack_and_lands_as_the_local_one(cluster, data_root, tmp_path):
    r = sweep(cluster, data_root, tmp_path / "slurm")
    assert r.returncode == 0, r.stderr
    assert "sweep of 4 runs as 2 SLURM jobs: 4 finished, 0 diverged, 0 failed" in r.stdout
    folder = tmp_path / "slurm" / "smoke" / "fig1"
    assert len(jobs_submitted(folder)) == 2
    local = run_cli([*SWEEP, f"data.root={data_root}", f"out_root={tmp_path / 'local'}"])
    assert local.returncode == 0, local.stderr
    runs = sorted(p.name for p in (tmp_path / "local" / "smoke" / "fig1").glob("norm=*"))
    assert len(runs) == 4 and sorted(p.name for p in folder.glob("norm=*")) == runs
    for run in runs:
        slurm_run = run_record(folder / run)
        assert slurm_run == run_record(tmp_path / "local" / "smoke" / "fig1" / run)
        assert slurm_run["summary.json"]["stack_size"] == 2
    # the front page holds no measured speed, so it is equal byte for byte
    assert report(tmp_path / "slurm", data_root, tmp_path / "r1") == report(tmp_path / "local", data_root,
                                                                            tmp_path / "r2")
    # a rerun finds every run finished and submits nothing
    again = sweep(cluster, data_root, tmp_path / "slurm")
    assert again.returncode == 0, again.stderr
    assert "sweep of 4 runs as 0 SLURM jobs: 4 finished, 0 diverged, 0 failed" in again.stdout
    assert len(jobs_submitted(folder)) == 2


def test_a_cancelled_job_resumes_from_its_checkpoint_when_the_sweep_is_run_again(cluster, data_root, tmp_path):
    # one run that outlives its first checkpoint by more than KillWait (2 s) even on a CPU 3x faster than this one
    long = ["norm=batch", "optim.lr=0.1", "trainer.steps=15000", "trainer.checkpoint_every=500",
            "trainer.eval_every=500", "trainer.probe_every=5000"]
    folder = tmp_path / "slurm" / "smoke" / "fig1"
    run = folder / ("norm=batch,optim.lr=0.1,seed=0,trainer.checkpoint_every=500,trainer.eval_every=500,"
                    "trainer.probe_every=5000,trainer.steps=15000")
    child = _start_sweep(cluster, data_root, tmp_path / "slurm", long)
    try:
        _wait_for(lambda: (run / "checkpoint.pt").exists(), child, "a checkpoint")
        [job] = queued(cluster)
        subprocess.run(["scancel", job], env=cluster, check=True)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode != 0 and f"SLURM job {job} ended without a result" in err
    assert "sweep of 1 run as 1 SLURM job: 0 finished, 0 diverged, 1 failed" in out
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    again = sweep(cluster, data_root, tmp_path / "slurm", *long)
    assert again.returncode == 0, again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed"] and summary["steps"] == 15000
    # every evaluation logged once: the rows the killed job wrote after its checkpoint were recomputed, not repeated
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 15001, 500))

def test_a_rerun_leaves_out_runs_still_queued_from_an_earlier_launch(cluster, data_root, tmp_path):
    # the first launch's job is held (sbatch --hold), so it stays queued, and its launcher waits on it
    one = ["norm=batch", "optim.lr=0.1", "+hydra.launcher.additional_parameters.hold=true"]
    first = _start_sweep(cluster, data_root, tmp_path / "slurm", one)
    try:
        _wait_for(lambda: bool(queued(cluster)), first, "queued job")
        [job] = queued(cluster)
        again = sweep(cluster, data_root, tmp_path / "slurm", *one)
        assert again.returncode == 0, again.stderr
        assert f"1 run still in SLURM job of an earlier launch ({job}): not submitted again" in again.stdout
        assert "sweep of 0 runs as 0 SLURM jobs" in again.stdout and queued(cluster) == [job]
        subprocess.run(["scancel", job], env=cluster, check=True)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert f"SLURM job {job} ended without a result" in err


def queued(cluster: dict) -> list[str]:
    return subprocess.run(["squeue", "--me", "--noheader", "--array", "--format=%i"], env=cluster,
                          capture_output=True, text=True, check=True).stdout.split()


def test_a_bad_config_is_refused_before_anything_is_submitted(cluster, data_root, tmp_path):
    r = sweep(cluster, data_root, tmp_path / "slurm", "trainer.batch_size=0")
    assert r.returncode != 0 and "[bnlab] trainer.batch_size=0 must be > 0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not jobs_submitted(tmp_path / "slurm" / "smoke" / "fig1")
    assert queued(cluster) == []


def _start_sweep(cluster: dict, data_root: Path, out_root: Path, extra: list[str]) -> subprocess.Popen:
    """`sweep` in the background, for a test that acts on its jobs while it waits on them."""
    return subprocess.Popen([sys.executable, "-m", *slurm_sweep(data_root, out_root, extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            env={**cli_environment(), "SLURM_CONF": cluster["SLURM_CONF"]})


def _wait_for(condition, child: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {what}: {child.communicate()}")
        time.sleep(0.1)
