"""Ioffe & Szegedy §2: normalisation computed outside the gradient step, against BN and no normalisation."""

import math

import pandas as pd

from bnlab import figures, plots, runlog
from bnlab.analysis import best_lr, done, score_difference, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "batch_detached")


def last_norm(run, column: str) -> float:
    """The last logged value of a parameter-norm column (a diverged run's is its last finite one)."""
    m = runlog.metrics(run.path)
    values = m[column].dropna() if column in m else pd.Series(dtype=float)
    values = values[values.apply(math.isfinite)]
    return float(values.iloc[-1]) if len(values) else math.nan


def bias_ratios(runs: pd.DataFrame, lr: float) -> list[float]:
    """Per seed: the detached network's final first-layer bias norm over the un-normalised network's."""
    at = select(runs, optim__lr=lr)
    out = []
    for seed in sorted(set(select(at, norm__name="none").seed) & set(select(at, norm__name="batch_detached").seed)):
        detached, plain = (last_norm(select(at, norm__name=arm, seed=seed).iloc[0], "bias_norm_L0")
                           for arm in ("batch_detached", "none"))
        out.append(detached / plain if plain else math.inf)
    return out


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs), nrows=2, width=3.2)
    figures.curves_by_lr(ax[0], runs, ARMS, lrs, "test_acc", (0, 1), "3 x 100 sigmoid MLP, MNIST")
    figures.curves_by_lr(ax[1], runs, ("none", "batch_detached"), lrs, "bias_norm_L0", None, "bias drift")
    for a in ax[1]:
        a.set(ylabel="first hidden layer's |b|")
        a.set_yscale("symlog", linthresh=1e-3)  # the biases start at 0
        a.set_ylim(bottom=0)
    fig_path = plots.save(fig, ctx.figure_path("accuracy_bias"))
    figures.final_accuracy_table(ctx, runs, "Statistics outside the gradient")
    best = best_lr(runs, "norm.name")
    gap = {f"lr {lr:g}": score_difference(runs, {"norm__name": "batch", "optim__lr": lr},
                                          {"norm__name": "batch_detached", "optim__lr": lr}) for lr in lrs}
    gap["each at its best lr"] = score_difference(
        runs, {"norm__name": "batch", "optim__lr": best["batch"]},
        {"norm__name": "batch_detached", "optim__lr": best["batch_detached"]})
    return [
        Finding("OG_blows_up", gap, f"BN minus BN with detached statistics, final test accuracy, points, per seed "
                f"(best rates: BN {best['batch']:g}, detached {best['batch_detached']:g})", fig_path),
        Finding("OG_bias_drifts", {f"lr {lr:g}": bias_ratios(runs, lr) for lr in lrs},
                "first hidden layer's final bias norm, detached statistics / no normalisation, per seed", fig_path),
    ]
