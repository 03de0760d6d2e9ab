"""The trainer and its probes on a GPU: run where CUDA is present (`pytest -m gpu`), skipped elsewhere."""

import pytest
import torch

from bnlab.runlog import atomic_torch_save, read_jsonl
from bnlab.runtime import resolve_device
from bnlab.train import train
from tests.conftest import make_cfg
from tests.test_train import history

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

PROBED = ["norm=noisy_batch", "model.activation=relu", "model.dropout=0.2", "trainer.ics_every=10",
          "trainer.ics_layers=[1,2]", "trainer.landscape_every=10", "trainer.moment_units=2", "device=cuda"]


def test_a_short_run_with_every_probe_trains_on_cuda(data_root, tmp_path):
    s = train(make_cfg(data_root, tmp_path, PROBED), str(tmp_path / "run"))
    assert s["status"] == "finished" and s["device"] == "cuda" and s["final_test_acc"] > 0.2
    assert {r["kind"] for r in read_jsonl(tmp_path / "run" / "probes.jsonl")} == {"ics", "landscape"}
    assert len(read_jsonl(tmp_path / "run" / "activations.jsonl")) == 3 * 4  # 3 layers x steps 0, 10, 20, 30


CNN = ["model=cnn", "norm=batch", "model.dropout=0.2", "device=cuda"]  # convolutions and max-pool's backward


@pytest.mark.parametrize("overrides", [PROBED, CNN], ids=["mlp", "cnn"])
def test_cuda_runs_repeat_and_resume_bitwise(data_root, tmp_path, monkeypatch, overrides):
    """Dropout and Alg. 1 noise draw from CUDA's RNG and the CPU's: both are checkpointed and restored; cuDNN and
    cuBLAS run their deterministic kernels."""
    cfg = make_cfg(data_root, tmp_path, overrides)
    train(cfg, str(tmp_path / "a"))
    train(cfg, str(tmp_path / "b"))
    assert history(tmp_path / "a") == history(tmp_path / "b")
    def save_then_die(obj, path):  # the first checkpoint lands, then the process dies
        atomic_torch_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr("bnlab.run.atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(tmp_path / "c"))
    monkeypatch.undo()
    train(cfg, str(tmp_path / "c"))
    assert history(tmp_path / "c") == history(tmp_path / "a")


def test_auto_picks_cuda_and_the_config_records_it(data_root, tmp_path):
    assert resolve_device("auto") == "cuda"
    s = train(make_cfg(data_root, tmp_path, ["device=auto", "trainer.steps=10"]), str(tmp_path / "auto"))
    assert s["device"] == "cuda" and "device: cuda" in (tmp_path / "auto" / "config.yaml").read_text().splitlines()
