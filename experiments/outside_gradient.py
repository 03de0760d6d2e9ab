"""Ioffe & Szegedy §2: normalisation computed outside the gradient step, against BN and no normalisation."""

import math

import pandas as pd

from bnlab import figures, plots, runlog
from bnlab.analysis import best_lr, by_seed, done, score_difference
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "batch_detached")


def last_norm(run, column: str) -> float:
    """The last logged value of a parameter-norm column (a diverged run's is its last finite one)."""
    m = runlog.metrics(run.path)
    values = m[column].dropna() if column in m else pd.Series(dtype=float)
    values = values[values.apply(math.isfinite)]
    return float(values.iloc[-1]) if len(values) else math.nan


def second_half_growth(run, column: str = "bias_norm_L0") -> float:
    """The norm at the end of training over the norm at mid-training (2 for growth linear in steps from 0, 1 for
    none): a reading aid for "grows indefinitely", not a claim."""
    m = runlog.metrics(run.path)
    if column not in m:
        return math.nan
    v = m[["step", column]].dropna()
    v = v[v[column].apply(math.isfinite)]
    if not len(v):
        return math.nan
    mid = v[v.step >= v.step.max() / 2].iloc[0][column]
    return float(v[column].iloc[-1] / mid) if mid else math.nan


def growth_ratios(runs: pd.DataFrame, plain: pd.DataFrame, lr: float) -> list[float]:
    """Per seed: the second-half growth of the first-layer bias norm without beta (statistics detached) over the
    un-normalised network's, at one rate."""
    detached = by_seed(plain, second_half_growth, optim__lr=lr)
    none = by_seed(runs, second_half_growth, norm__name="none", optim__lr=lr)
    return [detached[s] / none[s] if none[s] else math.nan for s in sorted(set(detached) & set(none))]


def analyze(ctx: Context) -> list[Finding]:
    nobeta = ctx.runs["norm.affine"].astype(str) == "False"  # Ioffe's example as written: detached, no gamma, beta
    runs, plain = done(ctx.runs[~nobeta]), done(ctx.runs[nobeta])
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs), nrows=2, width=3.2)
    figures.curves_by_lr(ax[0], runs, ARMS, lrs, "test_acc", (0, 1), "accuracy")
    figures.curves_by_lr(ax[1], runs, ("none", "batch_detached"), lrs, "bias_norm_L0", None, "bias drift")
    for a in ax[1]:
        a.set(ylabel="first hidden layer's |b|")
        a.set_yscale("symlog", linthresh=1e-3)  # the biases start at 0
        a.set_ylim(bottom=0)
    plots.shared_legend(fig)  # every panel's own legend sat on its lines
    fig.suptitle("3 x 100 sigmoid MLP, MNIST")
    fig_path = plots.save(fig, ctx.figure_path("accuracy_bias"))
    figures.final_accuracy_table(ctx, runs, "Statistics outside the gradient")
    best = best_lr(runs, "norm.name")
    gap = {f"lr {lr:g}": score_difference(runs, {"norm__name": "batch", "optim__lr": lr},
                                          {"norm__name": "batch_detached", "optim__lr": lr}) for lr in lrs}
    gap["each at its best lr"] = score_difference(
        runs, {"norm__name": "batch", "optim__lr": best["batch"]},
        {"norm__name": "batch_detached", "optim__lr": best["batch_detached"]})
    growth = {(lr, arm): by_seed(runs, second_half_growth, norm__name=arm, optim__lr=lr)
              for lr in lrs for arm in ("batch_detached", "none")}
    return [
        Finding("OG_blows_up", gap, f"BN minus BN with detached statistics, final test accuracy, points, per seed "
                f"(best rates: BN {best['batch']:g}, detached {best['batch_detached']:g})", fig_path),
        Finding("OG_bias_drifts", {f"lr {lr:g}": growth_ratios(runs, plain, lr) for lr in lrs},
                "second-half growth of the first hidden layer's bias norm (at the end / at mid-training: 2 for "
                "growth linear in steps, 1 for none) without gamma or beta, statistics detached, over no "
                "normalisation's, per seed. Detached without beta, alone: " + "; ".join(
                    f"lr {lr:g} {plots.values(list(by_seed(plain, second_half_growth, optim__lr=lr).values()))}"
                    for lr in lrs) + ". With beta learned (the BN arm of the figures), for comparison: " + "; ".join(
                    f"lr {lr:g} {plots.values(list(growth[lr, 'batch_detached'].values()))}" for lr in lrs)
                + "; no BN: " + "; ".join(f"lr {lr:g} {plots.values(list(growth[lr, 'none'].values()))}"
                                         for lr in lrs), fig_path),
    ]
