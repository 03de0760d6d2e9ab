"""Santurkar et al. 2018 Fig. 5, 6 and 12: lp normalisations against BN and none on the 6 x 100 ReLU MLP."""

import functools

import pandas as pd

from bnlab import figures, plots
from bnlab.analysis import done, moment_change, per_seed_ratio, score_difference, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "lp1", "lp2", "lpinf")
LP = ("lp1", "lp2", "lpinf")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs) + 1, width=3.2)
    figures.curves_by_lr(ax[0], runs, ARMS, lrs, "test_acc", (0.5, 1))
    figures.moment_changes(ax[0, -1], select(runs, optim__lr=lrs[0]), ARMS, f"lr {lrs[0]:g}")
    fig_path = plots.save(fig, ctx.figure_path("accuracy_moments"))
    table = runs.groupby(["norm.name", "optim.lr"]).final_test_acc.apply(list).reset_index()
    ctx.write_table("final_acc", table, "lp normalisation: final test accuracy (diverged runs excluded)")
    low = select(runs, optim__lr=lrs[0])
    # A centring normaliser pins each unit's batch mean to its beta, so mean changes measure only beta's updates;
    # the variance, which lp leaves free (BN does not), is where the shift shows.
    shift = {(arm, moment): per_seed_ratio(low, arm, "none", functools.partial(moment_change, moment=moment))
             for arm in ARMS[1:] for moment in ("mean", "var")}
    table = pd.DataFrame([{"norm.name": arm, **{f"{moment} change / none": list(shift[arm, moment])
                                                 for moment in ("mean", "var")}} for arm in ARMS[1:]])
    ctx.write_table("moment_change", table, "Median per-step change of unit moments, ratio to the "
                    f"standard network (lr {lrs[0]:g}, per seed: the median over hidden layers)")
    minus_bn = lambda arm, lr: score_difference(select(runs, optim__lr=lr), {"norm__name": arm},  # noqa: E731
                                                {"norm__name": "batch"})
    return [
        Finding("S8_lp_match", {f"{p}, lr {lr:g}": minus_bn(p, lr) for p in LP for lr in lrs},
                "lp minus BN, final test accuracy, points, per seed; contrast: the standard network minus BN at the "
                "same rate", fig_path, contrast={f"{p}, lr {lr:g}": minus_bn("none", lr) for p in LP for lr in lrs}),
        Finding("S8_lp_shift", {p: shift[p, "var"] for p in LP},
                "median per-step variance change, lp / standard, per seed (median over hidden layers)", fig_path),
    ]
