"""Santurkar et al. 2018 Fig. 3 (ICS, Def. 2.1) and Fig. 4 (landscape along the gradient), MLP on MNIST."""

import math

import numpy as np
import pandas as pd

from bnlab import collect, plots
from bnlab.analysis import done, layer_cells, per_seed_ratio, probe_median, seed_pairs
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")
EARLY = 0.2  # the claims concern the first 20% of training, where the paper's differences are largest


def probe_curves(runs: pd.DataFrame, arm: str, kind: str, column: str, **where) -> list[pd.DataFrame]:
    out = []
    for path in runs[runs["norm.name"] == arm].path:
        p = collect.probes(path)
        p = p[p.kind == kind]
        for k, v in where.items():
            p = p[p[k] == v]
        out.append(p)
    return out


def draw(ctx: Context, runs: pd.DataFrame, title: str, stem: str) -> str:
    """Row 1: ICS (l2 and cosine) at each probed layer. Row 2: the landscape along the gradient (and a random
    direction, dotted) over training, and the loss range against the training-batch loss: the matched-loss view."""
    layers = list(ctx.cfg.trainer.ics_layers)
    fig, ax = plots.subplots(max(4, 2 * len(layers)), 2, width=3.2, height=2.6)
    for arm in ARMS:
        color, label = plots.COLORS[arm], plots.LABELS[arm]
        for j, layer in enumerate(layers):
            plots.band(ax[0, 2 * j], probe_curves(runs, arm, "ics", "l2", layer=layer), "step", "l2", color, label)
            plots.band(ax[0, 2 * j + 1], probe_curves(runs, arm, "ics", "cos", layer=layer), "step", "cos", color,
                       label)
            ax[0, 2 * j].set(yscale="log", title=f"ICS ||G - G'||, layer {layer + 1}", xlabel="step", ylabel="l2")
            ax[0, 2 * j + 1].set(title=f"ICS cos(G, G'), layer {layer + 1}", xlabel="step", ylabel="cosine",
                                 ylim=(-1, 1.05))
        for direction, style in (("gradient", "-"), ("random", ":")):
            cs = probe_curves(runs, arm, "landscape", "loss", direction=direction)
            if direction == "gradient":
                plots.band(ax[1, 0], [c[["step", "range"]] for c in cs], "step", "range", color, label)
                for c in cs:
                    ax[1, 3].scatter(c["loss"], c["range"], s=4, color=color, alpha=0.5,
                                     label=label if c is cs[0] else None)
            plots.band(ax[1, 1], cs, "step", "grad_change", color, f"{label}, {direction}", linestyle=style)
            plots.band(ax[1, 2], cs, "step", "beta", color, f"{label}, {direction}", linestyle=style)
    ax[1, 0].set(yscale="log", title="loss range along the gradient", xlabel="step", ylabel="max - min loss")
    ax[1, 1].set(yscale="log", title="gradient predictiveness", xlabel="step", ylabel="max ||grad change||")
    ax[1, 2].set(yscale="log", title="effective beta-smoothness", xlabel="step", ylabel="max change / step")
    ax[1, 3].set(xscale="log", yscale="log", title="loss range at equal training loss",
                 xlabel="training-batch loss", ylabel="max - min loss")
    for a in (ax[0, 0], ax[1, 1], ax[1, 3]):
        a.legend(fontsize=7)
    for a in ax[0, 2 * len(layers):]:
        a.set_visible(False)
    fig.suptitle(title)
    return plots.save(fig, ctx.figure_path(stem))


def matched_loss_ratio(bn_run, plain_run, column: str) -> float:
    """Median over BN's landscape probes of column(BN) / column(none) at the standard network's probe with the
    nearest training-batch loss (log scale), within the loss range both runs cover: a comparison at equal
    progress, where a comparison at equal step flatters the network that is further along."""
    bn, plain = (collect.probes(r.path) for r in (bn_run, plain_run))
    bn, plain = (p[(p.kind == "landscape") & (p.direction == "gradient")] for p in (bn, plain))
    lo, hi = max(bn.loss.min(), plain.loss.min()), min(bn.loss.max(), plain.loss.max())
    bn = bn[(bn.loss >= lo) & (bn.loss <= hi)]
    if not len(bn) or not len(plain):
        return math.nan
    log_plain = np.log(plain.loss.to_numpy())
    nearest = [int(np.abs(log_plain - math.log(v)).argmin()) for v in bn.loss]
    return float(np.median(bn[column].to_numpy() / plain[column].to_numpy()[nearest]))


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    fig_path = draw(ctx, runs, "MLP on MNIST, lr 0.1: ICS (Def. 2.1) and the landscape along the gradient",
                    "ics_landscape")

    def early(column: str, direction: str = "gradient"):
        return lambda run: probe_median(run, "landscape", column, 0, EARLY, direction=direction)

    ics = lambda column: lambda run: probe_median(run, "ics", column, by_layer=True)  # noqa: E731
    matched = lambda column: [matched_loss_ratio(a, b, column)  # noqa: E731
                              for a, b in seed_pairs(runs, "batch", "none")]
    return [
        Finding("S3_ics_mlp", layer_cells(runs, "batch", "none", ics("l2")),
                "median ICS l2 over training, BN / standard, per seed", fig_path),
        Finding("S3_ics_mlp_cosine", layer_cells(runs, "batch", "none", ics("cos"), lambda a, b: (1 - a) / (1 - b)),
                "1 - (median cos(G, G') over training), BN / standard, per seed", fig_path),
        Finding("S4_loss_range", per_seed_ratio(runs, "batch", "none", early("range")),
                "median loss range along the gradient (first 20%), BN / standard, per seed", fig_path),
        Finding("S4_loss_range_matched", matched("range"),
                "median loss range along the gradient at matched training loss, BN / standard, per seed", fig_path),
        Finding("S5_predictiveness", per_seed_ratio(runs, "batch", "none", early("grad_change")),
                "median max gradient change (first 20%), BN / standard, per seed", fig_path),
        Finding("S5_predictiveness_matched", matched("grad_change"),
                "median max gradient change at matched training loss, BN / standard, per seed", fig_path),
        Finding("S6_beta", per_seed_ratio(runs, "batch", "none", early("beta")),
                "median effective beta (first 20%), BN / standard, per seed", fig_path),
        Finding("S7_random_direction", per_seed_ratio(runs, "batch", "none", early("range", "random")),
                "median loss range along a random direction (first 20%), BN / standard, per seed", fig_path),
    ]
