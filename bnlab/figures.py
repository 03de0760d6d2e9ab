"""Multi-panel figures that more than one experiment draws (experiments do not import each other)."""

import pandas as pd
from matplotlib.lines import Line2D

from bnlab import plots, runlog
from bnlab.analysis import curves, moment_change, select
from bnlab.claims import Context

ARMS = ("none", "batch")
FAINT = 0.12  # a band's alpha where bands overlap or are wide: the lines must show through them


def curves_by_lr(axes, runs, arms, lrs, column: str, ylim, title: str = "6 x 100 ReLU MLP, MNIST",
                 target: float | None = None) -> None:
    """One panel per learning rate: `column` against steps, median and min-max over seeds, one line per arm;
    a dotted line at `target` where a claim reads steps to it."""
    for ax, lr in zip(axes, lrs, strict=False):
        for arm in arms:
            cs = [c.dropna(subset=[column]) for c in curves(select(runs, norm__name=arm, optim__lr=lr)).values()]
            plots.band(ax, cs, "step", column, plots.COLORS[arm], plots.LABELS[arm])
        if target is not None:
            ax.axhline(target, color="k", lw=0.6, ls=":")
        ax.set(title=f"{title}, lr {lr:g}", xlabel="step", ylabel=column.replace("_", " "), ylim=ylim)
        ax.legend(fontsize=7)


def final_accuracy_table(ctx: Context, runs: pd.DataFrame, caption: str) -> None:
    """Final test accuracy of every run, listed by normaliser and learning rate (diverged runs excluded)."""
    table = runs.groupby(["norm.name", "optim.lr"]).final_test_acc.apply(list).reset_index()
    ctx.write_table("final_acc", table, f"{caption}: final test accuracy (diverged excluded)")


def moment_changes(ax, runs, arms, title: str) -> None:
    """Santurkar Fig. 8 in one panel: median (over seeds) per-step change of unit means, by hidden layer."""
    for arm in arms:
        per_layer = [moment_change(row) for _, row in runs[runs["norm.name"] == arm].iterrows()]
        if per_layer:
            layers = sorted(per_layer[0])
            medians = [sorted(d[layer] for d in per_layer)[len(per_layer) // 2] for layer in layers]
            ax.plot([layer + 1 for layer in layers], medians, marker="o", ms=3, color=plots.COLORS[arm],
                    label=plots.LABELS[arm])
    ax.set(yscale="log", xlabel="hidden layer", ylabel="median |mu_{t+1} - mu_t|",
           title=f"per-step mean change, {title}")
    ax.legend(fontsize=7)


def probe_curves(runs: pd.DataFrame, arm: str, kind: str, column: str, **where) -> list[pd.DataFrame]:
    out = []
    for path in runs[runs["norm.name"] == arm].path:
        p = runlog.probes(path)
        p = p[p.kind == kind]
        for k, v in where.items():
            p = p[p[k] == v]
        out.append(p)
    return out


def ics_and_landscape(ctx: Context, runs: pd.DataFrame, title: str, stem: str) -> str:
    """Row 1: ICS (l2 and cosine) at each probed layer. Row 2: the landscape along the gradient (and a random
    direction, dotted) over training, and the loss range against the training-batch loss: the matched-loss view."""
    layers = list(ctx.cfg.trainer.ics_layers)
    fig, ax = plots.subplots(max(4, 2 * len(layers)), 2, width=3.2, height=2.6)
    for arm in ARMS:
        color, label = plots.COLORS[arm], plots.LABELS[arm]
        for j, layer in enumerate(layers):
            plots.band(ax[0, 2 * j], probe_curves(runs, arm, "ics", "l2", layer=layer), "step", "l2", color, label)
            # the cosine jumps from probe to probe: a min-max band over seeds would cover [-1, 1] and the line
            plots.band(ax[0, 2 * j + 1], probe_curves(runs, arm, "ics", "cos", layer=layer), "step", "cos", color,
                       label, spread="iqr", alpha=FAINT)
            ax[0, 2 * j].set(yscale="log", title=f"ICS ||G - G'||, layer {layer + 1}", xlabel="step", ylabel="l2")
            ax[0, 2 * j + 1].set(title=f"ICS cos(G, G'), layer {layer + 1}", xlabel="step",
                                 ylabel="cosine (median, quartiles)", ylim=(-1, 1.05))
        for direction, style in (("gradient", "-"), ("random", ":")):
            cs = probe_curves(runs, arm, "landscape", "loss", direction=direction)
            if direction == "gradient":
                plots.band(ax[1, 0], [c[["step", "range"]] for c in cs], "step", "range", color, label)
                for c in cs:
                    ax[1, 3].scatter(c["loss"], c["range"], s=4, color=color, alpha=0.5,
                                     label=label if c is cs[0] else None)
            for a, column in ((ax[1, 1], "grad_change"), (ax[1, 2], "beta")):  # four bands on one another
                plots.band(a, cs, "step", column, color, f"{label}, {direction}", alpha=FAINT, linestyle=style)
    ax[1, 0].set(yscale="log", title="loss range along the gradient", xlabel="step", ylabel="max - min loss")
    ax[1, 1].set(yscale="log", title="gradient predictiveness", xlabel="step", ylabel="max ||grad change||")
    ax[1, 2].set(yscale="log", title="effective beta-smoothness", xlabel="step", ylabel="max change / step")
    ax[1, 3].set(xscale="log", yscale="log", title="loss range at equal training loss",
                 xlabel="training-batch loss", ylabel="max - min loss")
    # one legend below the panels: a panel's own sat on its lines; the colours are the arms in every panel
    plots.shared_legend(fig, [ax[0, 0]], extra=[Line2D([], [], color="k", ls=style, label=f"along {direction}")
                                                for direction, style in (("the gradient", "-"),
                                                                         ("a random direction", ":"))])
    for a in ax[0, 2 * len(layers):]:
        a.set_visible(False)
    fig.suptitle(title)
    return plots.save(fig, ctx.figure_path(stem))
