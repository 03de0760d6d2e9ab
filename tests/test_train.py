import json
import math
import platform
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException

from bnlab.runlog import atomic_torch_save, read_jsonl
from bnlab.train import ConfigError, run_jobs, train
from tests.conftest import interrupt_at_evaluation, make_cfg

STABLE = ("step", "test_loss", "test_acc", "train_loss", "train_acc")  # everything but wall-clock time


def history(path, name="metrics.jsonl", keys=STABLE):
    return [{k: r[k] for k in keys} if keys else r for r in read_jsonl(path / name)]


def test_short_run_learns_and_writes_its_directory(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, ["norm=batch", "optim.lr=0.5", "trainer.steps=60"])
    s = train(cfg, str(tmp_path / "run"))
    assert s["status"] == "finished" and s["steps"] == 60 and s["threads"] == 1
    assert s["final_test_acc"] > 0.5  # the fixture's labels are written into the pixels
    assert {"torch", "torchvision", "git_sha", "seed", "identity", "steps_per_s"} <= set(s)
    rows = history(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    acts = read_jsonl(tmp_path / "run" / "activations.jsonl")
    assert {a["layer"] for a in acts} == {0, 1, 2} and len(acts) == 3 * 7
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # dropped once the run is done
    assert (tmp_path / "run" / "config.yaml").exists()


FAULTS_A_ROUND = """
import resource, torch
from bnlab.runtime import keep_freed_memory
keep_freed_memory()

def one_round():
    held = [torch.empty(2 << 20).fill_(1.0) for _ in range(10)]
    del held

one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    one_round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator")
def test_freed_tensors_are_reused_without_page_faults():
    """Ten 8 MiB tensors alive at once, then freed, as a CNN step's activations are. With glibc's defaults a round
    can fault all 20,480 pages in again (freeing them trims the heap; fewer where the kernel backs the heap with
    huge pages). Measured in a fresh process: glibc's thresholds adapt to what a process allocated before, and a
    test suite's worth of tensors moves them."""
    faults = float(subprocess.run([sys.executable, "-c", FAULTS_A_ROUND], check=True, capture_output=True,
                                  text=True).stdout)
    assert faults < 2048  # under 10% of the pages


def test_divergence_is_a_status_not_a_crash(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, ["model.activation=relu", "model.init=normal", "model.init_std=1.0",
                                         "optim.lr=50.0", "trainer.steps=200"])
    s = train(cfg, str(tmp_path / "run"))
    assert s["status"] == "diverged" and s["diverged_at"] < 200 and s["final_test_acc"] is None
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["step"] == s["diverged_at"]  # what was logged up to the divergence is kept
    assert not math.isfinite(rows[-1]["train_loss"]) or rows[-1]["train_loss"] > 10 * math.log(10) / 2


def test_same_seed_same_numbers_bitwise(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, ["norm=batch"])
    train(cfg, str(tmp_path / "a"))
    train(cfg, str(tmp_path / "b"))
    assert history(tmp_path / "a") == history(tmp_path / "b")
    assert history(tmp_path / "a", "activations.jsonl", None) == history(tmp_path / "b", "activations.jsonl", None)


def test_probe_cadence_does_not_change_training(data_root, tmp_path):
    """Probes run BN in training mode on another batch; the trajectory must not notice."""
    dense = make_cfg(data_root, tmp_path, ["norm=batch", "trainer.probe_every=1"])
    sparse = make_cfg(data_root, tmp_path, ["norm=batch", "trainer.probe_every=1000"])
    train(dense, str(tmp_path / "dense"))
    train(sparse, str(tmp_path / "sparse"))
    assert history(tmp_path / "dense") == history(tmp_path / "sparse")


def test_finished_run_is_skipped_and_changed_config_retrains(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path)
    first = train(cfg, str(tmp_path / "run"))
    again = train(cfg, str(tmp_path / "run"))
    assert again == first  # read back, not retrained
    changed = make_cfg(data_root, tmp_path, ["optim.lr=0.2"])
    third = train(changed, str(tmp_path / "run"))
    assert third["identity"] != first["identity"]
    # the run it replaced is set aside whole, not overwritten
    [aside] = (tmp_path / ".superseded").glob("*/run")
    assert json.loads((aside / "summary.json").read_text()) == first
    assert history(aside) != history(tmp_path / "run") and (aside / "config.yaml").exists()
    assert not (tmp_path / "run" / "summary.json").read_text() == (aside / "summary.json").read_text()
    assert first["git_dirty"] in (True, False, None)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr=0.0 must be > 0"),
    ("optim.lr=-0.1", "must be > 0"),
    ("norm.name=weird", "norm.name (norm=)='weird' is not known; choose one of"),
    ("model.activation=swish", "model.activation='swish' is not known"),
    ("model.dropout=1.0", "model.dropout"),
    ("norm=layer trainer.jacobian_examples=5", "trainer.jacobian_examples needs a plain MLP"),
    ("model.residual=true trainer.jacobian_examples=5", "model.residual=True norm=none"),
    ("norm.last_layers=4", "norm.last_layers=4 must be between 0 (every hidden layer) and the 3 hidden layers"),
    ("model=cnn model.residual=true", "model.residual=true is for model=mlp"),
    ("+optim.lrr=0.1", "optim.lrr is not a config key; did you mean `optim.lr`"),  # `+`: Hydra accepts any key
])
def test_bad_values_are_refused_with_the_key_and_the_fix(data_root, tmp_path, override, message):
    cfg = make_cfg(data_root, tmp_path, override.split())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing half-made that could pass for a result


@pytest.mark.parametrize("override, options", [
    ("model.arch=rnn", "mlp, cnn"), ("model.init=orthogonal", "normal, xavier, kaiming, default"),
    ("trainer.loss=hinge", "cross_entropy, mse, mse_sum"), ("wandb.mode=cloud", "disabled, offline, online"),
    ("device=tpu", "cpu, cuda, mps, auto"), ("data.preprocess=whiten", "unit, standardize, binarize"),
])
def test_a_value_outside_a_fixed_set_is_refused_with_the_options(data_root, tmp_path, override, options):
    with pytest.raises(ConfigCompositionException) as refused:
        make_cfg(data_root, tmp_path, [override])
    value = override.split("=")[1]
    assert f"Invalid value '{value}', expected one of [{options}]" in str(refused.value.__cause__)


def test_parameter_norms_are_logged_at_every_evaluation(data_root, tmp_path):
    """trainer.param_norms: each hidden layer's weight norm (and bias norm, where the layer keeps a bias) in every
    metrics row, the last one equal to the final weights'."""
    for norm, has_bias in (("none", True), ("batch", False)):
        cfg = make_cfg(data_root, tmp_path, [f"norm={norm}", "trainer.param_norms=true", "trainer.save_model=true"])
        train(cfg, str(tmp_path / norm))
        rows, final = read_jsonl(tmp_path / norm / "metrics.jsonl"), torch.load(tmp_path / norm / "model.pt")
        assert len(rows) == 4 and all("weight_norm_L2" in r and ("bias_norm_L2" in r) == has_bias for r in rows)
        assert rows[-1]["weight_norm_L0"] == pytest.approx(final["blocks.0.linear.weight"].norm().item(), rel=1e-6)
        assert rows[0]["weight_norm_L0"] != rows[-1]["weight_norm_L0"]  # logged as training moves it
        if has_bias:
            assert rows[-1]["bias_norm_L1"] == pytest.approx(final["blocks.1.linear.bias"].norm().item(), rel=1e-6)


def test_moment_penalty_is_zero_on_standardised_inputs_and_pulls_them_there(data_root, tmp_path):
    """The penalty's known values (0 for standardised units; a unit of mean 1 and variance 4 costs 1 + 9), and a
    penalised un-normalised network whose nonlinearity inputs end closer to mean 0, std 1 than without it."""
    from bnlab.stack import stack_key
    from bnlab.stepping import moment_penalty

    z = torch.randn(1000, 5, generator=torch.Generator().manual_seed(0))
    z = (z - z.mean(0)) / z.std(0, unbiased=False)
    assert moment_penalty([z]).item() == pytest.approx(0.0, abs=1e-10)
    assert moment_penalty([z, 2 * z + 1]).item() == pytest.approx(10.0, rel=1e-5)
    off = []
    for lam in (0.0, 1.0):
        cfg = make_cfg(data_root, tmp_path, [f"trainer.moment_penalty={lam}", "model.init=normal", "model.init_std=0.5",
                                             "trainer.steps=60"])
        assert (stack_key(cfg) is None) == bool(lam)  # the stack has no penalty: a penalised run trains alone
        train(cfg, str(tmp_path / f"lam{lam}"))
        last = [r for r in read_jsonl(tmp_path / f"lam{lam}" / "activations.jsonl") if r["step"] == 60]
        off.append(sum(abs(r["mean"]) + abs(r["std"] - 1) for r in last))
    assert off[1] < 0.5 * off[0]


def test_batch_of_one_with_bn_is_refused(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, ["norm=batch", "trainer.batch_size=1"])
    with pytest.raises(ConfigError, match="batch of 2 or more"):
        train(cfg, str(tmp_path / "run"))


def test_failure_is_recorded_with_traceback(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path)

    def boom(*a, **k):
        raise RuntimeError("injected fault")

    monkeypatch.setattr("bnlab.stepping.evaluate", boom)
    with pytest.raises(RuntimeError, match="injected fault"):
        run_jobs([cfg], [str(tmp_path / "run")])
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "injected fault" in s["error"]
    assert "Traceback" in (tmp_path / "run" / "error.txt").read_text()
    # A failed run is retried, not counted as done, the next time the sweep comes round.
    monkeypatch.undo()
    assert run_jobs([cfg], [str(tmp_path / "run")])[0]["status"] == "finished"
    assert not (tmp_path / "run" / "error.txt").exists()


def test_resume_from_checkpoint_equals_uninterrupted(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path, ["norm=batch", "optim.momentum=0.9", "trainer.steps=40"])
    train(cfg, str(tmp_path / "whole"))
    # Interrupt after step 25: the checkpoint at 20 exists, and rows for 20..25 were already logged.
    interrupt_at_evaluation(monkeypatch, 4)  # the evaluation at step 30
    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(tmp_path / "cut"))
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.undo()
    s = train(cfg, str(tmp_path / "cut"))
    assert s["resumed"] and s["status"] == "finished"
    assert history(tmp_path / "cut") == history(tmp_path / "whole")
    assert history(tmp_path / "cut", "activations.jsonl", None) == \
        history(tmp_path / "whole", "activations.jsonl", None)


def test_checkpoint_of_another_config_is_not_resumed(data_root, tmp_path, monkeypatch):
    interrupt_at_evaluation(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data_root, tmp_path, ["optim.lr=0.1"]), str(tmp_path / "run"))
    monkeypatch.undo()
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    s = train(make_cfg(data_root, tmp_path, ["optim.lr=0.3"]), str(tmp_path / "run"))
    assert not s["resumed"]
    train(make_cfg(data_root, tmp_path, ["optim.lr=0.3"]), str(tmp_path / "fresh"))
    assert history(tmp_path / "run") == history(tmp_path / "fresh")


def test_wandb_offline_mirrors_into_the_run_directory(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(data_root, tmp_path, ["wandb.mode=offline"])
    s = train(cfg, str(tmp_path / "run"))
    assert s["status"] == "finished"
    [offline] = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert list(offline.glob("*.wandb")) and s["probe_time_s"] > 0


def test_wandb_gives_a_killed_and_resumed_run_one_wandb_run(data_root, tmp_path, monkeypatch):
    """Two runs of a sweep, one killed after its first checkpoint and resumed: exactly two wandb runs (by id),
    grouped by experiment and scale, without the claims in their config, and the final status in the summary."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    calls, real_init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or real_init(**kw))
    cfgs = [make_cfg(data_root, tmp_path, ["wandb.mode=offline", f"seed={s}"]) for s in (0, 1)]

    def save_then_die(obj, path):
        atomic_torch_save(obj, path)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("bnlab.run.atomic_torch_save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(cfgs[1], str(tmp_path / "run1"))
    summaries = [train(c, str(tmp_path / f"run{i}")) for i, c in enumerate(cfgs)]
    assert summaries[1]["resumed"] and len(calls) == 3
    assert len({c["id"] for c in calls}) == 2 and all(c["resume"] == "allow" for c in calls)
    assert {(c["group"], c["job_type"]) for c in calls} == {("adhoc/cpu", "cpu")}
    assert all("claims" not in c["config"] for c in calls)
    offline = [p.name.split("-")[3] for p in tmp_path.glob("run*/wandb/offline-run-*")]  # offline-run-<time>-<id>
    assert len(offline) == 3 and set(offline) == {c["id"] for c in calls}  # the resumed run went on in its own


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_device_auto_falls_back_to_the_cpu_and_a_missing_device_is_one_message(data_root, tmp_path):
    s = train(make_cfg(data_root, tmp_path, ["device=auto", "trainer.steps=10"]), str(tmp_path / "auto"))
    assert s["status"] == "finished" and s["device"] == "cpu"
    # resolved before the identity: the run is the one device=cpu names, and its config.yaml says where it trained
    assert train(make_cfg(data_root, tmp_path, ["device=cpu", "trainer.steps=10"]), str(tmp_path / "auto")) == s
    assert "device: cpu" in (tmp_path / "auto" / "config.yaml").read_text().splitlines()
    with pytest.raises(ConfigError, match="device=cuda is not available here"):
        train(make_cfg(data_root, tmp_path, ["device=cuda"]), str(tmp_path / "cuda"))
