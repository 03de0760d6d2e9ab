"""Ioffe §4.2.2 (BN-x5-Sigmoid analogue): a 10-layer sigmoid MLP trains only with BN."""

import numpy as np

from bnlab import plots, runlog
from bnlab.analysis import curves, done, fraction_beyond, frozen_choice, score, select, selection
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def best_setting(runs, arm: str) -> tuple[str, float]:
    """The arm's own best (init, learning rate): highest median score over seeds, a diverged run at chance;
    chosen on the exploratory seeds (`frozen_choice`)."""

    def choose() -> list:
        med = runs[runs["norm.name"] == arm].assign(score=lambda d: score(d)).groupby(["model.init", "optim.lr"])
        med = med.score.median().reset_index().sort_values("optim.lr", kind="stable")  # ties: the smaller rate
        row = med.loc[med.score.idxmax()]
        return [str(row["model.init"]), float(row["optim.lr"])]

    init, lr = frozen_choice(selection(runs, [f"best init and rate of {arm}"]), choose)
    return init, lr


def curve_panels(axes, runs_at_best_init: dict, setting: dict, lrs: list[float]) -> None:
    """Test accuracy over training at each learning rate, each arm at its own best init."""
    for ax, lr in zip(axes, lrs, strict=True):
        for arm in ARMS:
            plots.band(ax, list(curves(select(runs_at_best_init[arm], optim__lr=lr)).values()), "step", "test_acc",
                       plots.COLORS[arm], f"{plots.LABELS[arm]} ({setting[arm][0]} init)")
        ax.set(title=f"10 sigmoid layers, lr {lr:g}", xlabel="step", ylabel="test accuracy", ylim=(0, 1))


def saturation_panel(ax, runs_at_best_init: dict, setting: dict, hist_range: float) -> None:
    """The fraction of sigmoid inputs beyond |4| (sigmoid' < 0.018) per hidden layer, at the first and last probe
    of each arm's best setting (first seed): an arm by colour and marker, a probe by line style and fill. The lines
    may lie near 0, one on another: each line's markers sit a little to the side of the layer, and the y axis zooms
    in on small fractions, with a note saying so."""
    lines = []
    for arm, marker in zip(ARMS, ("s", "o"), strict=True):
        init, lr = setting[arm]
        r = select(runs_at_best_init[arm], optim__lr=lr)
        if not len(r):
            continue
        acts = runlog.activations(r.sort_values("seed").path.iloc[0])
        for step, style, face in ((acts.step.min(), ":", "white"), (acts.step.max(), "-", plots.COLORS[arm])):
            a = acts[acts.step == step].sort_values("layer")
            lines.append(fraction_beyond(a, 4.0, hist_range).to_numpy())
            ax.plot(a.layer + 1 + 0.14 * (len(lines) - 2.5), lines[-1], ls=style, marker=marker, ms=4, mfc=face,
                    color=plots.COLORS[arm], label=f"{plots.LABELS[arm]} ({init} init, lr {lr:g}), step {step}")
    top = float(np.max(np.concatenate(lines))) if lines else 0.0
    ax.set(title="saturated sigmoid inputs (|x| > 4)", xlabel="hidden layer", ylabel="fraction of inputs",
           ylim=(-0.05, 1))  # below 0: a line at 0 stays clear of the axis
    if 0 < top < 0.05:  # on a 0-1 axis every line would lie on 0: zoom in, and say so
        ax.set_ylim(-0.15 * top, 2.8 * top)  # the upper half for the legend and the note
        ax.text(0.98, 0.45, f"y axis zoomed in: at most {top:.2g}\nof inputs saturate", transform=ax.transAxes,
                ha="right", fontsize=7)
    elif top == 0 and lines:
        ax.text(0.5, 0.5, "no input saturates: every line at 0", transform=ax.transAxes, ha="center", fontsize=7)
    ax.legend(fontsize=7, loc="upper right")


def draw(ctx: Context, runs_at_best_init: dict, setting: dict, lrs: list[float]):
    """One panel per learning rate and the saturation panel, in rows of at most four; one legend for the curves."""
    fig, axes = plots.panels(len(lrs) + 1, width=3.4)
    curve_panels(axes[:-1], runs_at_best_init, setting, lrs)
    plots.shared_legend(fig, axes[:-1])
    saturation_panel(axes[-1], runs_at_best_init, setting, ctx.cfg.trainer.hist_range)
    return fig


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    setting = {arm: best_setting(runs, arm) for arm in ARMS}
    best = {arm: lr for arm, (_, lr) in setting.items()}
    runs_at_best_init = {arm: select(runs, norm__name=arm, model__init=setting[arm][0]) for arm in ARMS}
    lrs = sorted(runs["optim.lr"].unique())
    fig_path = plots.save(draw(ctx, runs_at_best_init, setting, lrs), ctx.figure_path("curves"))
    table = runs.assign(score=score(runs)).groupby(["norm.name", "model.init", "optim.lr"]).score
    ctx.write_table("final_acc", table.apply(list).reset_index(),
                    "10-layer sigmoid MLP: final test accuracy by init and learning rate (a diverged run at chance)")
    per_seed = {arm: score(select(runs_at_best_init[arm], optim__lr=best[arm])).tolist() for arm in ARMS}
    return [
        Finding("I5_plain_fails", per_seed["none"], f"no BN at its best setting: {setting['none'][0]} init, lr "
                f"{best['none']:g}", fig_path),
        Finding("I5_bn_trains", per_seed["batch"], f"BN at its best setting: {setting['batch'][0]} init, lr "
                f"{best['batch']:g}", fig_path),
    ]
