"""Ioffe & Szegedy 2015 §4.1, Figure 1: accuracy over training (a) and sigmoid-input percentiles (b, c)."""

import math

import pandas as pd

from bnlab import collect, plots
from bnlab.analysis import best_lr, curves, done, ratio, select, steps_to, value_at
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")
PAPER = {  # read off Fig. 1(a) by eye (../shared/research/claims.md, I1); the paper gives no numbers in text
    ("none", 2500): "≈0.71", ("none", 10000): "≈0.93", ("none", 50000): "≈0.975",
    ("batch", 2500): "≈0.955", ("batch", 10000): "≈0.97", ("batch", 50000): "≈0.98",
}


def drift(acts: pd.DataFrame, layer: int, units: int, after_step: float) -> float:
    """Range of the median plus range of the 85-15 spread over training, averaged over units 0..units-1."""
    a = acts[(acts.layer == layer) & (acts.step >= after_step)]
    total = 0.0
    for u in range(units):
        spread = a[f"u{u}_p85"] - a[f"u{u}_p15"]
        total += (a[f"u{u}_p50"].max() - a[f"u{u}_p50"].min()) + (spread.max() - spread.min())
    return total / units


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    steps, layer = ctx.cfg.trainer.steps, ctx.cfg.model.depth - 1
    units = ctx.cfg.trainer.probe_units
    best = best_lr(runs, "norm.name")
    shared = best.get("none")
    arm_runs = {arm: select(runs, norm__name=arm, optim__lr=best.get(arm, math.nan)) for arm in ARMS}
    shared_runs = {arm: select(runs, norm__name=arm, optim__lr=shared) for arm in ARMS}

    # (a) accuracy vs steps at the baseline's best rate, plus BN at its own best rate if that differs
    fig, ax = plots.subplots(4, width=3.4)
    for arm in ARMS:
        plots.band(ax[0, 0], list(curves(shared_runs[arm]).values()), "step", "test_acc",
                   plots.COLORS[arm], f"{plots.LABELS[arm]} (lr {shared:g})")
    if best.get("batch") != shared:
        plots.band(ax[0, 0], list(curves(arm_runs["batch"]).values()), "step", "test_acc", plots.COLORS["batch"],
                   f"BN (own best lr {best.get('batch'):g})", linestyle="--")
    ax[0, 0].set(xlabel="training step", ylabel="test accuracy", ylim=(0.7, 1.0), title="(a) MNIST test accuracy")
    ax[0, 0].legend(loc="lower right")
    # (a') the same at the smallest rate of the grid, where a plain sigmoid net is learning-rate starved
    low = min(runs["optim.lr"])
    for arm in ARMS:
        plots.band(ax[0, 3], list(curves(select(runs, norm__name=arm, optim__lr=low)).values()), "step", "test_acc",
                   plots.COLORS[arm], f"{plots.LABELS[arm]} (lr {low:g})")
    ax[0, 3].set(xlabel="training step", ylabel="test accuracy", ylim=(0.7, 1.0), title=f"(a') same, lr {low:g}")
    ax[0, 3].legend(loc="lower right")
    # (b, c) percentiles of unit 0 of the last hidden layer, first seed, baseline's best rate
    for col, arm in ((1, "none"), (2, "batch")):
        r = shared_runs[arm]
        if not len(r):
            continue
        acts = collect.activations(r.sort_values("seed").path.iloc[0])
        a = acts[acts.layer == layer]
        for p, style in ((15, ":"), (50, "-"), (85, ":")):
            ax[0, col].plot(a.step, a[f"u0_p{p}"], style, color=plots.COLORS[arm], label=f"{p}th")
        ax[0, col].set(xlabel="training step", ylabel="sigmoid input",
                       title=f"({'bc'[col - 1]}) {plots.LABELS[arm]}: last hidden layer, unit 0")
        ax[0, col].legend(loc="upper right")
    fig_path = plots.save(fig, ctx.figure_path("accuracy_percentiles"))

    # table: accuracy at the paper's checkpoints and steps to targets, per arm and learning rate choice
    rows = []
    tags = {("none", shared): "baseline's best", ("batch", best.get("batch")): "BN's own best"}
    for arm, lr in sorted(runs.groupby(["norm.name", "optim.lr"]).groups, key=lambda k: (k[0] != "none", k[1])):
        why = tags.get((arm, lr), "")
        r = select(runs, norm__name=arm, optim__lr=lr)
        cs = curves(r)
        row = {"arm": plots.LABELS[arm], "lr": f"{lr:g}" + (f" ({why})" if why else "")}
        for s in (2500, 10000, steps):
            row[f"acc@{s}"] = plots.median_range([value_at(c, s) for c in cs.values()])
            row[f"paper@{s}"] = PAPER.get((arm, s), "")
        for t in (0.95, 0.97, 0.98):
            row[f"steps to {t:.0%}"] = plots.median_range([steps_to(c, t) for c in cs.values()])
        row["steps/s"] = plots.median_range(r.steps_per_s)
        rows.append(row)
    ctx.write_table("table", pd.DataFrame(rows), "Figure 1 in numbers (median [min, max] over seeds; "
                    "'inf' never reached)")

    findings = []
    own = {arm: curves(arm_runs[arm]) for arm in ARMS}
    seeds = sorted(set(own["none"]) & set(own["batch"]))
    speed = [ratio(steps_to(own["batch"][s], 0.97), steps_to(own["none"][s], 0.97)) for s in seeds]
    findings.append(Finding("I1_faster", speed, f"steps to 97%: BN (lr {best.get('batch')}) "
                            f"{[steps_to(own['batch'][s], 0.97) for s in seeds]} vs baseline (lr {shared}) "
                            f"{[steps_to(own['none'][s], 0.97) for s in seeds]}", fig_path))
    gain = [100 * (value_at(own["batch"][s], steps) - value_at(own["none"][s], steps)) for s in seeds]
    findings.append(Finding("I1_accuracy", gain, "final test accuracy, BN minus baseline, in points", fig_path))
    drift_ratio = []
    for s in sorted(set(shared_runs["none"].seed) & set(shared_runs["batch"].seed)):
        d = {arm: drift(collect.activations(select(shared_runs[arm], seed=s).path.iloc[0]), layer, units,
                        0.05 * steps) for arm in ARMS}
        drift_ratio.append(d["batch"] / d["none"])
    findings.append(Finding("I2_stable", drift_ratio, "drift ratio BN/none of the last hidden layer's "
                            "sigmoid-input percentiles", fig_path))
    return findings
