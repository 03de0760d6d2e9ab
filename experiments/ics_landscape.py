"""Santurkar et al. 2018 Fig. 3 (ICS, Def. 2.1) and Fig. 4 (landscape along the gradient), MLP on MNIST."""

import pandas as pd

from bnlab import collect, plots
from bnlab.analysis import done, paired_ratio, probe_median
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
    layers = list(ctx.cfg.trainer.ics_layers)
    fig, ax = plots.subplots(2 * len(layers) + 3, width=2.9)
    for arm in ARMS:
        color, label = plots.COLORS[arm], plots.LABELS[arm]
        for j, layer in enumerate(layers):
            plots.band(ax[0, 2 * j], probe_curves(runs, arm, "ics", "l2", layer=layer), "step", "l2", color, label)
            plots.band(ax[0, 2 * j + 1], probe_curves(runs, arm, "ics", "cos", layer=layer), "step", "cos", color,
                       label)
            ax[0, 2 * j].set(yscale="log", title=f"ICS l2, layer {layer + 1}", xlabel="step")
            ax[0, 2 * j + 1].set(title=f"ICS cosine, layer {layer + 1}", xlabel="step", ylim=(-1, 1))
        k = 2 * len(layers)
        for direction, style in (("gradient", "-"), ("random", ":")):
            cs = probe_curves(runs, arm, "landscape", "loss", direction=direction)
            lo = [c[["step", "loss_min"]] for c in cs]
            hi = [c[["step", "loss_max"]] for c in cs]
            if direction == "gradient":
                plots.band(ax[0, k], lo, "step", "loss_min", color, f"{label} min")
                plots.band(ax[0, k], hi, "step", "loss_max", color, f"{label} max", linestyle="--")
            plots.band(ax[0, k + 1], cs, "step", "grad_change", color, f"{label} {direction}", linestyle=style)
            plots.band(ax[0, k + 2], cs, "step", "beta", color, f"{label} {direction}", linestyle=style)
        ax[0, k].set(yscale="log", title="loss along the gradient", xlabel="step")
        ax[0, k + 1].set(yscale="log", title="gradient predictiveness", xlabel="step")
        ax[0, k + 2].set(yscale="log", title="effective beta-smoothness", xlabel="step")
    for a in ax[0]:
        a.legend(fontsize=5)
    fig.suptitle(title)
    return plots.save(fig, ctx.figure_path(stem))


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    fig_path = draw(ctx, runs, "MLP on MNIST, lr 0.1: ICS (Def. 2.1) and the landscape along the gradient",
                    "ics_landscape")
    pair = ("seed",)

    def early(column: str, direction: str = "gradient"):
        return lambda run: probe_median(run, "landscape", column, 0, EARLY, direction=direction)

    return [
        Finding("S3_ics_mlp", paired_ratio(runs, "batch", "none",
                                           lambda run: probe_median(run, "ics", "l2", by_layer=True), pair),
                "median ICS l2 over training, BN / standard, per layer and seed", fig_path),
        Finding("S4_loss_range", paired_ratio(runs, "batch", "none", early("range"), pair),
                "median loss range along the gradient (first 20%), BN / standard", fig_path),
        Finding("S5_predictiveness", paired_ratio(runs, "batch", "none", early("grad_change"), pair),
                "median max gradient change (first 20%), BN / standard", fig_path),
        Finding("S6_beta", paired_ratio(runs, "batch", "none", early("beta"), pair),
                "median effective beta (first 20%), BN / standard", fig_path),
        Finding("S7_random_direction", paired_ratio(runs, "batch", "none", early("range", "random"), pair),
                "median loss range along a random direction (first 20%), BN / standard", fig_path),
    ]
