"""Speed of bnlab runs (alone and stacked) against the canonical torchvision + DataLoader loop, on this machine.

  python scripts/bench.py [--steps 600] [--repeats 3]      (make bench)   ->  results/bench.md

Each configuration is timed `repeats` times, interleaved so that drifts in machine load hit all alike, at one
thread. Reported: median [min, max] steps/s, the ratio to the canonical loop measured in the same run, and the
fraction of the FLOP floor (matmul GFLOP/s measured here x FLOPs per training step).
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import bnlab.stack
from bnlab.config import REPO_ROOT, TrainerConfig
from bnlab.data import _UnverifiedCIFAR10, load
from bnlab.efficiency import matmul_gflops, step_flops
from bnlab.models import build_model
from bnlab.runlog import atomic_write_text, cpu_name
from bnlab.sweeps import experiment_config
from bnlab.train import train_runs

WORKLOADS = {  # name: (experiment config it comes from, overrides, batch)
    "MNIST MLP 784-100x3-10 sigmoid, no BN": ("fig1", ["norm=none", "optim.lr=0.5"], 60),
    "MNIST MLP 784-100x3-10 sigmoid, BN": ("fig1", ["norm=batch", "optim.lr=0.5"], 60),
    "CIFAR-10 CNN 16-32-64, BN": ("cifar", ["norm=batch", "optim.lr=0.1"], 128),
    # small batches are all per-operation overhead: what stacking is for
    "MNIST MLP 784-256x2-10 ReLU, LayerNorm, batch 2": ("small_batch", ["norm=layer", "trainer.batch_size=2"], 2),
    "MNIST MLP 784-256x2-10 ReLU, GroupNorm, batch 2": ("small_batch", ["norm=group", "trainer.batch_size=2"], 2),
}


STACK_SIZES = (8, 16)  # stack sizes timed


def flops_per_step(cfg, shape, batch: int) -> float:
    return step_flops(cfg.model, cfg.norm, shape, 10, batch)


def canonical(cfg, steps: int, batch: int) -> float:
    """What most tutorials write: a torchvision Dataset with per-sample transforms and a shuffling DataLoader."""
    root = cfg.data.root
    if cfg.data.name == "mnist":
        normalize = transforms.Normalize((0.1307,), (0.3081,))
        ds = datasets.MNIST(root, train=True, download=False,
                            transform=transforms.Compose([transforms.ToTensor(), normalize]))
        shape = (1, 28, 28)
    else:
        ds = _UnverifiedCIFAR10(root, train=True, download=False, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))]))
        shape = (3, 32, 32)
    model = build_model(cfg.model, cfg.norm, shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    done, t = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return steps / (time.perf_counter() - t)


def bnlab_run(cfg, steps: int, stack: int = 1, every: int | None = None) -> list[dict]:
    """The real trainer; `stack` > 1: that many runs (own seeds and learning rates) trained as one stack.
    Evaluation and probes every `every` steps (None: only at the end, so the time is training speed)."""
    cfg = cfg.copy()
    every = every or steps
    cfg.trainer.update(steps=steps, eval_every=every, probe_every=every, checkpoint_every=steps, progress=False)
    cfgs = []
    for k in range(stack):
        member = cfg.copy()
        member.seed, member.optim.lr = k, cfg.optim.lr * (1 + k / stack)
        cfgs.append(member)
    with tempfile.TemporaryDirectory() as tmp:
        return train_runs(cfgs, [f"{tmp}/{k}" for k in range(stack)])


def speed(cfg, steps: int, stack: int = 1) -> float:
    return bnlab_run(cfg, steps, stack)[0]["steps_per_s"]  # a member's share of the stack's time: per model


def general_step_speed(cfg, steps: int, k: int) -> float:
    """`speed` with the stack's small-batch step (x^T W^T, weights updated in place) turned off."""
    small_batch, bnlab.stack.SMALL_BATCH = bnlab.stack.SMALL_BATCH, 0
    try:
        return speed(cfg, steps, k)
    finally:
        bnlab.stack.SMALL_BATCH = small_batch


def instrumentation(cfg, steps: int, stack: int, shape, gflops: float) -> tuple[float, float]:
    """Evaluation + activation probes at the schema's default cadence, as a fraction of training time; and the
    least the evaluations alone could cost: their FLOPs at the matmul rate, over the same training time."""
    every = TrainerConfig.eval_every
    assert every == TrainerConfig.probe_every
    summaries = bnlab_run(cfg, steps, stack, every)
    train_time = statistics.median(s["train_time_s"] for s in summaries)
    evaluated = (steps // every + 1) * len(load(cfg.data).test.x)  # step 0 and every `every` steps
    floor = evaluated * step_flops(cfg.model, cfg.norm, shape, 10, 1, backward=False) / (gflops * 1e9)
    return statistics.median(s["probe_time_s"] / s["train_time_s"] for s in summaries), floor / train_time


def median_range(v: list[float]) -> str:
    return f"{statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per timing (CNN: a fifth)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gflops = matmul_gflops()
    rows, costs = [], []
    for name, (experiment, overrides, batch) in WORKLOADS.items():
        cfg = experiment_config(experiment, "cpu", overrides)
        steps = args.steps if cfg.model.arch == "mlp" else max(20, args.steps // 5)
        shape = (1, 28, 28) if cfg.data.name == "mnist" else (3, 32, 32)
        floor = gflops * 1e9 / flops_per_step(cfg, shape, batch)
        variants = {"canonical loop": partial(canonical, cfg, steps, batch),
                    "bnlab, one run": partial(speed, cfg, steps)}
        stackable = bnlab.stack.stack_key(cfg) is not None  # CNNs train alone: they are compute-bound already
        if stackable:
            variants.update({f"bnlab, stack of {k}": partial(speed, cfg, steps, k) for k in STACK_SIZES})
            if batch <= bnlab.stack.SMALL_BATCH:  # the small-batch step against the general one, in this same run
                variants[f"bnlab, stack of {max(STACK_SIZES)}, general step"] = partial(
                    general_step_speed, cfg, steps, max(STACK_SIZES))
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant, fn in variants.items():
                times[variant].append(fn())
        canonical_rate = statistics.median(times["canonical loop"])
        for variant, t in times.items():
            rate = statistics.median(t)
            rows.append(f"| {name} | {variant} | {median_range(t)} | {rate / canonical_rate:.1f}x | {floor:.0f} | "
                        f"{rate / floor:.0%} | {50000 / rate:.0f} s |")
            print(rows[-1], flush=True)
        long = 4 * TrainerConfig.eval_every if cfg.model.arch == "mlp" else 2 * TrainerConfig.eval_every
        for k in (1, max(STACK_SIZES)) if stackable else (1,):
            share, floor = instrumentation(cfg, long, k, shape, gflops)
            costs.append(f"| {name} | {'one run' if k == 1 else f'stack of {k}'} | {long} | {share:.1%} | "
                         f"{floor:.1%} |")
            print(costs[-1], flush=True)
    text = (
        "# bnlab speed benchmark\n\n"
        f"Generated by `python scripts/bench.py --steps {args.steps} --repeats {args.repeats}` on "
        f"{cpu_name()} ({os.cpu_count()} cores), 1 thread, torch {torch.__version__}, "
        f"Python {platform.python_version()}. Matmul (2048^3, float32, 1 thread): {gflops:.1f} GFLOP/s.\n\n"
        "Steps/s per model are median [min, max] over the repeats. *Canonical loop*: torchvision Dataset with "
        "ToTensor + Normalize per sample and a shuffling DataLoader (num_workers=0). *bnlab, one run*: the real "
        "trainer (`bnlab.train.train_runs`), data held as one in-memory tensor and gathered by index. *bnlab, stack "
        "of K*: K runs (own seeds, data orders and learning rates) trained as one stacked model, steps/s per model "
        f"= K x stack steps/s; at a batch of {bnlab.stack.SMALL_BATCH} or less it multiplies as x^T W^T and updates "
        "each weight in place (`StackedMLP.small_batch_step`), and *general step* is the same stack with that turned "
        "off (W x, autograd's gradient, then the update). *Floor*: matmul GFLOP/s / FLOPs per training step of "
        "one model (matmuls and convolutions only, torch.utils.flop_counter). The last column is a 50,000-step "
        "run at that rate, evaluation excluded.\n\n"
        "| workload | how | steps/s per model | vs canonical | floor steps/s | of floor | 50k steps |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"## Instrumentation at the default cadence\n\nFull test-set evaluation (eval mode) and activation "
        f"percentiles, moments and histograms of every hidden layer on the {TrainerConfig.probe_size}-example probe "
        f"batch, every {TrainerConfig.eval_every} steps (the schema's default), as a share of training time "
        "(`probe_time_s / train_time_s` of the runs; one repeat; step 0's evaluation included, so slightly "
        "above the steady state). *Evaluation at the floor*: the test-set passes' FLOPs at the matmul rate over the "
        "same training time, the least the evaluation alone could cost.\n\n"
        "| workload | how | steps | eval + probes / training | evaluation at the floor / training |\n"
        "|---|---|---|---|---|\n"
        + "\n".join(costs) + "\n"
    )
    atomic_write_text(REPO_ROOT / "results" / "bench.md", text)
    print(f"[bnlab] wrote {Path('results') / 'bench.md'}")


if __name__ == "__main__":
    main()
