"""The wandb mirror: its id, name and group, and a killed offline run's history after the resume."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bnlab.config import REPO_ROOT, run_identity
from bnlab.runlog import RunDir, WandbMirror, read_jsonl, wandb_name
from tests.conftest import cli_environment, make_cfg, run_cli


def test_wandb_id_name_and_group_come_from_the_run_not_where_out_root_lies(data_root, tmp_path, monkeypatch):
    """The same run under two out_roots gets one wandb id; the name is short, the group is experiment/scale, and
    the optional wandb keys reach wandb.init without changing the run's identity."""
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or SimpleNamespace(step=0))
    extra = ["wandb.mode=offline", "wandb.entity=lab", "wandb.tags=[bn,replication]", "wandb.notes=why"]
    folder = "cpu/fig1/norm=batch,optim.lr=0.5,seed=1"
    for root in ("a", "b/c"):
        cfg = make_cfg(data_root, tmp_path / root, ["experiment=fig1", *extra])
        WandbMirror(cfg, tmp_path / root / folder, run_identity(cfg))
    assert calls[0]["id"] == calls[1]["id"] and calls[0]["id"].startswith(run_identity(cfg) + "_")
    assert calls[0]["name"] == "fig1/batch,lr0.5,s1" and calls[0]["group"] == "fig1/cpu"
    assert (calls[0]["entity"], calls[0]["tags"], calls[0]["notes"]) == ("lab", ["bn", "replication"], "why")
    WandbMirror(cfg, tmp_path / "b/c/cpu/fig1/norm=batch,optim.lr=0.5,seed=2", run_identity(cfg))
    assert calls[2]["id"] != calls[0]["id"]  # another place under out_root, another run
    assert run_identity(cfg) == run_identity(make_cfg(data_root, tmp_path, ["experiment=fig1"]))  # role "report"


def test_wandb_names_shorten_the_run_directory_overrides():
    assert wandb_name("cifar", Path("data=cifar10,model.widths=[100,100],optim.lr=0.01,seed=0")) \
        == "cifar/cifar10,widths=[100,100],lr0.01,s0"
    assert wandb_name("adhoc", Path("/x/run1")) == "adhoc/run1" and wandb_name("fig1", Path("/x/fig1")) == "fig1"


def offline_history(record: Path) -> dict[int, dict]:
    """The history rows of an offline wandb record, by step. The record is a LevelDB-style log: after a 7-byte
    header, 32 KiB blocks of chunks, each a 7-byte header (checksum, length, type) and its part of one protobuf
    Record; type 1 (full) or 4 (last) ends a record, and a block's tail under 7 bytes is padding."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, chunks, rows = record.read_bytes(), 32768, 7, [], {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            item = Record.FromString(b"".join(chunks))
            chunks = []
            if item.HasField("history"):
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in item.history.item}
                rows[row["_step"]] = row
    return rows


def kill_after_a_checkpoint(args: list[str], sweep: Path) -> Path:
    """Start the CLI, SIGKILL its process group once its run has a checkpoint and at most 20 evaluation rows;
    the run directory."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=cli_environment())
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any(len((p.parent / "metrics.jsonl").read_text().splitlines()) <= 20
                                                 for p in sweep.glob("*/checkpoint.pt")):
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    [run_dir] = [p.parent for p in sweep.glob("*/checkpoint.pt")]
    assert not (run_dir / "summary.json").exists()
    return run_dir


@pytest.mark.slow
def test_a_killed_offline_run_resumes_with_the_whole_history(data_root, tmp_path):
    """SIGKILL an offline wandb run after a checkpoint, rerun it: the resumed attempt's record holds every row of
    metrics.jsonl (and the activation summaries), step for step and value for value."""
    args = ["bnlab.train", f"data.root={data_root}", f"out_root={tmp_path}", "wandb.mode=offline",
            "trainer.steps=4000", "trainer.eval_every=100", "trainer.checkpoint_every=100",
            "trainer.probe_every=500", "trainer.probe_size=50", "trainer.progress=false", "data.download=false"]
    run_dir = kill_after_a_checkpoint(args, tmp_path / "cpu" / "adhoc")

    r = run_cli(args, env_extra={"WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr
    assert RunDir(run_dir).summary()["resumed"]
    *_, resumed = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))  # offline-run-<time>-<id>
    history, metrics = offline_history(resumed), read_jsonl(run_dir / "metrics.jsonl")
    assert sorted(history) == [row["step"] for row in metrics] == list(range(0, 4001, 100))
    for row in metrics:
        logged = {k: v for k, v in row.items() if v is not None}
        assert {k: history[row["step"]][k] for k in logged} == logged
    acts = {(a["step"], a["layer"]): a["p50"] for a in read_jsonl(run_dir / "activations.jsonl")}
    assert acts == {(step, layer): history[step][f"act/L{layer}/p50"] for step, layer in acts}

