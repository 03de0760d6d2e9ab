"""Kill anywhere, resume, fault isolation: each exercised with the real failure."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bnlab import runlog
from bnlab.config import REPO_ROOT
from bnlab.runlog import read_jsonl
from bnlab.train import train
from tests.conftest import make_cfg, run_cli
from tests.test_stack import assert_close_rows

pytestmark = pytest.mark.slow
SWEEP = ["norm=batch", "seed=0,1,2,3", "trainer.steps=1500", "trainer.eval_every=100", "trainer.probe_every=500",
         "trainer.probe_size=50", "trainer.checkpoint_every=100", "trainer.progress=false", "data.download=false",
         "hydra.launcher.n_jobs=2"]


@pytest.mark.parametrize("stack", [True, False])
def test_sigkill_mid_sweep_then_rerun_loses_and_duplicates_nothing(data_root, tmp_path, stack):
    sweep_args = [*SWEEP, f"trainer.alone={str(not stack).lower()}"]
    if stack:  # two stacks of 2 on two workers finish within milliseconds of each other, which a poll can miss;
        # one after the other on one worker, the first is finished while the second checkpoints part-way
        sweep_args = [a for a in sweep_args if not a.startswith("hydra.launcher.n_jobs")] + [
            "hydra.launcher.n_jobs=1", "hydra.launcher.max_stack=2"]
    args = [sys.executable, "-m", "bnlab.train", "-m", f"data.root={data_root}", f"out_root={tmp_path}", *sweep_args]
    sweep = tmp_path / "cpu" / "adhoc"
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:  # kill the whole process group once one run is done and another is part-way with a checkpoint
        deadline = time.time() + 240
        while time.time() < deadline:
            done = list(sweep.glob("*/summary.json"))
            # at most half-way (8 of 16 evaluation rows): a run that is about to finish can write its summary
            # and delete its checkpoint between this poll and the kill, leaving nothing part-way to resume
            partial = [p for p in sweep.glob("*/checkpoint.pt") if not (p.parent / "summary.json").exists()
                       and len((p.parent / "metrics.jsonl").read_text().splitlines()) <= 8]
            if done and partial:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the sweep never reached a state with one finished and one part-way run")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = {p.parent.name: p.read_text() for p in sweep.glob("*/summary.json")}
    assert 1 <= len(finished_before) < 4

    r = run_cli(["bnlab.train", "-m", f"data.root={data_root}", f"out_root={tmp_path}", *sweep_args])
    assert r.returncode == 0, r.stderr
    runs = runlog.runs(sweep)
    assert sorted(runs.seed) == [0, 1, 2, 3] and set(runs.status) == {"finished"}  # none lost, none twice
    for name, text in finished_before.items():  # finished runs were not retrained
        assert (sweep / name / "summary.json").read_text() == text
    assert runs.resumed.any()  # the part-way run continued from its checkpoint
    # ... and a resumed run is bitwise the run that was never interrupted
    resumed = runs[runs.resumed].iloc[0]
    cfg = make_cfg(data_root, tmp_path, [f"seed={int(resumed.seed)}", *SWEEP[:1], *SWEEP[2:-1]])
    train(cfg, str(tmp_path / "reference"))
    keys = ("step", "test_loss", "test_acc", "train_loss", "train_acc")
    got = [{k: row[k] for k in keys} for row in read_jsonl(sweep / resumed.path.split("/")[-1] / "metrics.jsonl")]
    want = [{k: row[k] for k in keys} for row in read_jsonl(tmp_path / "reference" / "metrics.jsonl")]
    if stack:  # a stack resumed is bitwise the stack uninterrupted (test_stack); alone it is within rounding
        assert_close_rows(got, want)
    else:
        assert got == want


def test_one_failing_job_does_not_sink_the_sweep(data_root, tmp_path):
    """Two runs (one stacked pair) read a truncated dataset; they fail with their traceback on disk, the other
    pair finishes."""
    from tests.conftest import write_mnist

    corrupt = write_mnist(tmp_path / "corrupt")
    images = corrupt / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    r = run_cli(["bnlab.train", "-m", f"data.root={data_root},{corrupt}", f"out_root={tmp_path / 'out'}",
                 "trainer.steps=20", "trainer.eval_every=10", "trainer.probe_every=10", "trainer.probe_size=50",
                 "trainer.progress=false", "data.download=false", "seed=0,1", "hydra.sweep.subdir=${hydra.job.num}"])
    assert r.returncode != 0  # Hydra reports the failure at the end, after every job has run
    runs = runlog.runs(tmp_path / "out" / "cpu" / "adhoc")
    status = {(root, seed): s for root, seed, s in zip(runs["data.root"], runs.seed, runs.status, strict=True)}
    assert status == {(str(data_root), 0): "finished", (str(data_root), 1): "finished",
                      (str(corrupt), 0): "failed", (str(corrupt), 1): "failed"}
    assert set(runs[runs.status == "finished"].stack_size) == {2}  # each pair trained as one stack
    failed = runs[runs.status == "failed"].iloc[0]
    assert "corrupt or truncated" in failed.error
    # the sweep ends with its tally, the failed runs named by their folders
    tally = r.stdout[r.stdout.index("[bnlab] sweep of 4 runs"):].splitlines()
    assert tally[0] == "[bnlab] sweep of 4 runs as 2 jobs: 2 finished, 0 diverged, 2 failed"
    assert sorted(line.split("/")[-1] for line in tally[1:3]) == sorted(runs[runs.status == "failed"].path.str[-1:])
    assert all(line.startswith("[bnlab]   failed: ") for line in tally[1:3])
    assert "DataError" in (tmp_path / "out" / "cpu" / "adhoc" / failed.path.split("/")[-1] / "error.txt").read_text()


CANNOT_RUN = {  # what makes a run impossible before it starts, and the message that must say so
    "missing data": (["data.root={tmp}/nowhere", "data.download=false"], "mnist is not available under data root"),
    "invalid config": (["data.root={data}", "model.dropout=1.5"], "model.dropout=1.5 must be in [0, 1)"),
    # Hydra accepts any key added with `+`; the run would ignore it
    "unknown key": (["data.root={data}", "+optim.lrr=0.1"], "optim.lrr is not a config key; did you mean `optim.lr`?"),
    # Hydra's own message would suggest that `+`
    "misspelt key": (["data.root={data}", "optim.lrr=0.1"], "optim.lrr is not a config key; did you mean `optim.lr`?"),
    # a download would create the folder: a mistyped root would pass for a dataset folder
    "missing data folder": (["data.root={tmp}/nowhere"], "(no such folder; bnlab downloads only into a folder that"),
}


@pytest.mark.parametrize("mode", ["-m", "single"])
@pytest.mark.parametrize("cause", CANNOT_RUN)
def test_what_cannot_run_is_one_message_before_any_run(data_root, tmp_path, mode, cause):
    """A sweep (or a single run) that cannot run stops before any job with one message that says what to do:
    no traceback per job, no run directory that could pass for a failed run."""
    overrides, message = CANNOT_RUN[cause]
    sweep = ["-m", "seed=0,1", "hydra.launcher.n_jobs=1"] if mode == "-m" else []  # no process pool to start
    r = run_cli(["bnlab.train", *sweep, *[o.format(tmp=tmp_path, data=data_root) for o in overrides],
                 f"out_root={tmp_path / 'out'}", "trainer.steps=10"])
    assert r.returncode != 0
    assert r.stderr.count(message) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "To append to your config" not in r.stderr  # Hydra's hint to add a misspelt key with `+`
    assert not list((tmp_path / "out").rglob("summary.json")) and not list((tmp_path / "out").rglob(".hydra"))
    assert not (tmp_path / "nowhere").exists()  # no data root made as a side effect


def test_unwritable_out_root_is_refused_before_any_job(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = run_cli(["bnlab.train", f"out_root={blocker}/runs"])
    assert r.returncode != 0
    assert "cannot write results under out_root" in r.stderr and "Traceback" not in r.stderr
    assert not (blocker.parent / "runs").exists()  # nothing was created that could pass for a result
