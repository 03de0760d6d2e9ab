"""Santurkar et al. 2018 Fig. 1: CIFAR-10 CNN with and without BN at learning rates 0.1 and 0.5."""

import numpy as np

from bnlab import plots, runlog
from bnlab.analysis import curves, done, score_difference, select, value_at
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs) + 2, width=3.0)
    for i, lr in enumerate(lrs):
        for arm in ARMS:
            cs = list(curves(select(runs, norm__name=arm, optim__lr=lr)).values())
            plots.band(ax[0, i], cs, "step", "test_acc", plots.COLORS[arm], f"{plots.LABELS[arm]} test")
            plots.band(ax[0, i], [c.dropna(subset=["train_acc"]) for c in cs], "step", "train_acc",
                       plots.COLORS[arm], f"{plots.LABELS[arm]} train", linestyle=":")
        ax[0, i].set(title=f"CIFAR-10 CNN, lr {lr:g}", xlabel="step", ylabel="accuracy", ylim=(0, 1))
        ax[0, i].legend(fontsize=6)
    # Santurkar Fig. 1 (right): distribution of one layer's activations over training, BN vs none, lr 0.1
    layer = 1
    for j, arm in enumerate(ARMS):
        r = select(runs, norm__name=arm, optim__lr=lrs[0])
        if not len(r):
            continue
        acts = runlog.activations(r.sort_values("seed").path.iloc[0])
        a = acts[acts.layer == layer]
        edges = np.linspace(-ctx.cfg.trainer.hist_range, ctx.cfg.trainer.hist_range, ctx.cfg.trainer.hist_bins + 1)
        mids = (edges[1:] + edges[:-1]) / 2
        ridge = ax[0, len(lrs) + j]
        for k, (_, row) in enumerate(a.iloc[:: max(1, len(a) // 6)].iterrows()):
            h = np.asarray(row["hist"], float)
            ridge.plot(mids, h / h.sum() + 0.15 * k, color=plots.COLORS[arm], lw=0.8)
            ridge.text(edges[-1], 0.15 * k + 0.02, f"step {int(row.step)}", fontsize=6, ha="right")
        ridge.set(title=f"{plots.LABELS[arm]}: layer {layer + 1} inputs, lr {lrs[0]:g}, seed "
                        f"{int(r.seed.min())}", xlabel="pre-activation", ylabel="over training (offset)",
                  yticks=[])
    fig_path = plots.save(fig, ctx.figure_path("curves_histograms"))
    steps = ctx.cfg.trainer.steps
    table = runs.assign(acc=[value_at(c, steps) for c in [runlog.metrics(p) for p in runs.path]])
    table = table.groupby(["norm.name", "optim.lr"]).acc.apply(list).reset_index()
    ctx.write_table("final_acc", table, f"CIFAR-10 CNN: test accuracy after {steps} steps (NaN: diverged)")
    at = lambda arm, lr: {"norm__name": arm, "optim__lr": lr}  # noqa: E731
    return [Finding("S1_high_lr", score_difference(runs, at("batch", 0.5), at("none", 0.5)),
                    "BN minus none at lr 0.5, points", fig_path),
            Finding("S1_low_lr", score_difference(runs, at("batch", 0.1), at("none", 0.1)),
                    "BN minus none at lr 0.1, points", fig_path)]
