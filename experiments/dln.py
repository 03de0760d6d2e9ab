"""Santurkar et al. 2018 Fig. 3 and 10 on the 25-layer deep linear network: ICS, loss, landscape."""

import math
from pathlib import Path

import pandas as pd

from bnlab import figures, plots
from bnlab.analysis import curves, done, final_train_loss, layer_cells, per_seed_ratio, probe_median, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def draw_loss(ctx: Context, runs: pd.DataFrame, lrs: list[float]) -> Path:
    """Training loss against steps, one panel per learning rate, both arms."""
    fig, ax = plots.subplots(len(lrs), width=3.2)
    for i, lr in enumerate(lrs):
        for arm in ARMS:
            cs = [c.dropna(subset=["train_loss"]) for c in curves(select(runs, norm__name=arm, optim__lr=lr)).values()]
            plots.band(ax[0, i], cs, "step", "train_loss", plots.COLORS[arm], plots.LABELS[arm])
        ax[0, i].set(yscale="log", title=f"25-layer linear net, lr {lr:g}", xlabel="step", ylabel="training loss (sum)")
        ax[0, i].legend()
    return plots.save(fig, ctx.figure_path("loss"))


def trains_better(runs: pd.DataFrame, lrs: list[float]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per learning rate, the final training loss standard / BN per seed, and the rates where it is untestable."""
    ratios, untestable = {}, {}
    for lr in lrs:
        cell, at = f"lr {lr:g}", select(runs, optim__lr=lr)
        diverged = sorted(int(s) for s in select(at, norm__name="none", status="diverged").seed)
        ratios[cell] = [math.nan if math.isinf(v) else v for v in per_seed_ratio(at, "none", "batch", final_train_loss)]
        if diverged:
            untestable[cell] = (f"the standard network diverged in seeds {diverged} (loss above 100x its initial "
                                "value): none/BN is then unbounded, a measure of the baseline's instability at this "
                                "rate, not of BN's final loss against a trained baseline")
    return ratios, untestable


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    loss_fig = draw_loss(ctx, runs, lrs)
    probe_figs = {lr: figures.ics_and_landscape(ctx, select(runs, optim__lr=lr),
                                                f"deep linear network, lr {lr:g}: ICS and landscape",
                                                f"probes_lr{lr:g}") for lr in lrs}
    table = runs.groupby(["norm.name", "optim.lr"]).final_train_loss.apply(list).reset_index()
    ctx.write_table("final_loss", table, "Deep linear network: final training loss (sum of squares)")
    low, high = select(runs, optim__lr=1e-7), select(runs, optim__lr=1e-6)
    second_half = lambda col: lambda run: probe_median(run, "ics", col, 0.5, 1.0, by_layer=True)  # noqa: E731
    ics_fig = probe_figs.get(1e-7, loss_fig)
    better, untestable = trains_better(runs, lrs)
    return [
        Finding("S3_ics_dln", layer_cells(low, "batch", "none", second_half("l2")),
                "median ICS l2 over the second half, BN / standard, per seed, lr 1e-7 (shown, not counted: it "
                "scales with the gradient's norm; S3_ics_dln_cosine decides S3)", ics_fig),
        Finding("S3_ics_dln_cosine", layer_cells(low, "batch", "none", second_half("cos"), lambda a, b: b - a),
                "median cos(G, G') over the second half, standard minus BN, per seed, lr 1e-7", ics_fig),
        Finding("S3_dln_bn_trains_better", better, "final training loss, standard / BN, per seed (NaN: the "
                "standard network diverged)", loss_fig, untestable=untestable),
        Finding("S5_dln_predictiveness",
                per_seed_ratio(high, "batch", "none", lambda run: probe_median(run, "landscape", "grad_change",
                                                                               direction="gradient")),
                "median max gradient change along the gradient, BN / standard, per seed, lr 1e-6",
                probe_figs.get(1e-6, loss_fig)),
    ]
