"""How close a reproduction came to what this CPU's matrix units allow: its core-seconds against the FLOP floor.

  python -m bnlab.efficiency --scale cpu      (the end of `make reproduce`; appends a line to results/timing_cpu.log)

The floor is every reported run's training and evaluation FLOPs (torch.utils.flop_counter: matmuls and
convolutions; one step's forward and backward times its steps, one example's forward times the examples each
evaluation scored) over the single-thread matmul rate measured now. Probes, process start-up and data loading are
left out of the FLOPs and in the core-seconds, which are the sum of the per-experiment sweep times (one worker, so
one core, each) of the last `make reproduce` in the timing log; a reproduction that resumed finished runs counts
their FLOPs but not their time, so its ratio reads high.
"""

import argparse
import functools
import json
import time
from pathlib import Path
from typing import cast

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from bnlab.config import REPO_ROOT, DataConfig, schema_values
from bnlab.data import SYNTHETIC, load
from bnlab.models import build_model
from bnlab.runlog import CONFIG, METRICS, SUMMARY, cpu_name
from bnlab.stepping import LOSSES
from bnlab.sweeps import TIME_LINE, last_block


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This thread's float32 matmul rate: the best of `repeats` n x n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def step_flops(model_cfg, norm_cfg, shape: tuple[int, ...], classes: int, batch: int, loss: str = "cross_entropy",
               backward: bool = True) -> float:
    """FLOPs of one forward (and backward) pass of the model on `batch` examples."""
    model = build_model(model_cfg, norm_cfg, shape, classes)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,)) if loss == "cross_entropy" else torch.randn(batch, classes)
    with FlopCounterMode(display=False) as counter:
        if backward:
            LOSSES[loss](model(x), y).backward()
        else:  # evaluation: eval mode, where BN's statistics are running ones (a batch of one is fine)
            with torch.no_grad():
                model.eval()(x)
    return counter.get_total_flops()


IMAGE_SETS = {"mnist": ((1, 28, 28), 10, 10_000), "cifar10": ((3, 32, 32), 10, 10_000)}  # shape, classes, tests
STEP_OVERHEAD_FLOPS = 2e8  # what a step costs beyond its FLOPs (Python, small kernels, logging): ~2 ms at 100 GFLOP/s


@functools.cache
def _rates(model: str, norm: str, shape: tuple[int, ...], classes: int, batch: int, loss: str) -> tuple[float, float]:
    """(FLOPs of a training step, FLOPs of one evaluated example) of a model and norm given as YAML."""
    model_cfg, norm_cfg = OmegaConf.create(model), OmegaConf.create(norm)
    return (step_flops(model_cfg, norm_cfg, shape, classes, batch, loss),
            step_flops(model_cfg, norm_cfg, shape, classes, 1, loss, backward=False))


@functools.cache
def _synthetic_set(name: str, n_samples: int, dim: int) -> tuple[tuple[int, ...], int, int]:
    data = SYNTHETIC[name](n_samples, dim)  # generated in milliseconds
    return data.shape, data.num_classes, len(data.test.x)


def expected_cost(cfg) -> float:
    """A run's expected cost in FLOPs, from its config alone (no data read): its training and evaluation FLOPs and a
    fixed overhead per step. What a sweep's time-left estimate weighs runs by, so one CIFAR CNN is not one MNIST MLP."""
    tc, d = cfg.trainer, cfg.data
    shape, classes, tests = IMAGE_SETS[d.name] if d.name in IMAGE_SETS else _synthetic_set(d.name, d.n_samples, d.dim)
    train, per_example = _rates(OmegaConf.to_yaml(cfg.model), OmegaConf.to_yaml(cfg.norm), shape, classes,
                                tc.batch_size, tc.loss)
    mid_run = -(-tc.steps // tc.eval_every) if tc.eval_every else 0  # at step 0 and each eval_every; last: the end
    scored = (tc.eval_subset or tests) * mid_run + tests + tc.train_eval_size * (mid_run + 1)
    return tc.steps * (train + STEP_OVERHEAD_FLOPS) + per_example * scored


@functools.cache
def _data_source() -> dict:
    """Where this machine reads the data (root, download, verify): the runs may have trained elsewhere."""
    source = cast(dict, OmegaConf.to_container(OmegaConf.structured(DataConfig), resolve=True))
    return {k: source[k] for k in ("root", "download", "verify")}


@functools.cache
def _per_run_rates(key: str) -> tuple[float, float, int]:
    """(FLOPs per training step, FLOPs per evaluated example, test examples) for a run config's JSON."""
    cfg = OmegaConf.create(json.loads(key))
    data = load(cfg.data)
    train, per_example = _rates(OmegaConf.to_yaml(cfg.model), OmegaConf.to_yaml(cfg.norm), data.shape,
                                data.num_classes, cfg.trainer.batch_size, cfg.trainer.loss)
    return train, per_example, len(data.test.x)


def run_flops(run_dir: Path) -> tuple[float, float]:
    """(training FLOPs, evaluation FLOPs) of one run, from its config, its steps and its logged evaluations."""
    with open(run_dir / CONFIG) as f:  # PyYAML's C loader: OmegaConf takes ~40 ms a run
        cfg = yaml.load(f, Loader=yaml.CSafeLoader)
    # a key the run predates has its default, as in runlog.run_config; the data's source is this machine's
    defaults = schema_values()
    parts = {k: {**defaults[k], **cfg[k]} for k in ("model", "norm", "trainer")}
    parts["data"] = {**defaults["data"], **cfg["data"], **_data_source()}
    per_step, per_example, test_size = _per_run_rates(json.dumps(parts, sort_keys=True))
    summary = json.loads((run_dir / SUMMARY).read_text())
    rows = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
    scored = sum(r.get("test_examples", test_size) + parts["trainer"]["train_eval_size"] for r in rows)
    return per_step * summary["steps"], per_example * scored


def reproduction_flops(runs_csv: Path, out_root: Path, stage: str = "exploratory") -> tuple[float, float, int]:
    """(training, evaluation FLOPs, runs) of one stage's runs the report read (runs.csv: in the sweep, not stale;
    paths relative to out_root)."""
    runs = pd.read_csv(runs_csv)
    runs = runs[(runs.stage if "stage" in runs else "exploratory") == stage]
    runs = runs[runs.in_sweep & ~runs.stale & runs.status.isin(["finished", "diverged"])]
    train = evaluation = 0.0
    for path in runs.path:
        t, e = run_flops(out_root / path)
        train, evaluation = train + t, evaluation + e
    return train, evaluation, len(runs)


def core_seconds(log: Path) -> float:
    """The sum of the sweep times (whole sweeps, second stages and shards of either) of the last
    `make reproduce` in the timing log."""
    return float(sum(int(m[5]) for m in map(TIME_LINE.match, last_block(log.read_text().splitlines())) if m))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--stage", default="confirmatory", choices=("exploratory", "confirmatory"),
                        help="whose runs the reproduction trained")
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = REPO_ROOT / "results" / f"timing_{args.scale}.log"
    train, evaluation, n = reproduction_flops(REPO_ROOT / "results" / "runs.csv", REPO_ROOT / "results" / "runs",
                                              args.stage)
    gflops, spent = matmul_gflops(), core_seconds(log)
    floor = (train + evaluation) / (gflops * 1e9)
    line = (f"[bnlab] efficiency: {n} runs, {train / 1e12:.1f} TFLOP of training and {evaluation / 1e12:.1f} of "
            f"evaluation = {floor:.0f} s at {gflops:.0f} GFLOP/s (one thread, {cpu_name()}); the sweeps took "
            f"{spent:.0f} core-s, {floor / spent:.1%} of the floor's speed" if spent else "no sweep times logged")
    print(line)
    with log.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
