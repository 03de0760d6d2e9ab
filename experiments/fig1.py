"""Ioffe & Szegedy 2015 §4.1, Figure 1: accuracy over training (a) and sigmoid-input percentiles (b, c)."""

import math

import numpy as np
import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import best_lr, curves, done, ratio, select, steps_to, value_at
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")
PAPER = {  # read off Fig. 1(a) by eye (../shared/research/claims.md, I1), so approximate: no numbers in the text
    ("none", 2500): 0.71, ("none", 10000): 0.93, ("none", 50000): 0.975,
    ("batch", 2500): 0.955, ("batch", 10000): 0.97, ("batch", 50000): 0.98,
}


def drift(acts: pd.DataFrame, layer: int, units: int, after_step: float) -> float:
    """Range of the median plus range of the 85-15 spread over training, averaged over units 0..units-1."""
    a = acts[(acts.layer == layer) & (acts.step >= after_step)]
    total = 0.0
    for u in range(units):
        spread = a[f"u{u}_p85"] - a[f"u{u}_p15"]
        total += (a[f"u{u}_p50"].max() - a[f"u{u}_p50"].min()) + (spread.max() - spread.min())
    return total / units


def error_panel(ax, runs, lr_by_arm: dict, title: str) -> None:
    """Test error on a log axis (where 97% and 98% are visibly apart), median and min-max over seeds."""
    for arm, lr in lr_by_arm.items():
        cs = [c.assign(test_err=1 - c.test_acc) for c in curves(select(runs, norm__name=arm, optim__lr=lr)).values()]
        plots.band(ax, cs, "step", "test_err", plots.COLORS[arm], f"{plots.LABELS[arm]}, lr {lr:g}")
    ax.set(yscale="log", ylim=(0.01, 0.3), xlabel="training step", ylabel="test error", title=title)
    ax.legend(loc="upper right", fontsize=7)


def draw(ctx: Context, runs: pd.DataFrame, best: dict, layer: int, drift: pd.DataFrame) -> str:
    """Row 1: test error at the baseline's best rate, at each arm's own best, at the smallest rate, and I2's
    drift ratio at every rate. Rows 2-3: the 15/50/85th percentiles of unit 0 of the last hidden layer (seed 0)
    at every rate, without and with BN, on one y-range."""
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(max(4, len(lrs)), 3, width=3.3, height=2.6)
    shared = best.get("none")
    error_panel(ax[0, 0], runs, {arm: shared for arm in ARMS}, f"(a) at the baseline's best lr ({shared:g})")
    error_panel(ax[0, 1], runs, {arm: best.get(arm) for arm in ARMS}, "(a) each arm at its own best lr")
    error_panel(ax[0, 2], runs, {arm: lrs[0] for arm in ARMS}, f"(a) at the smallest lr ({lrs[0]:g})")
    ax[0, 3].errorbar(drift.lr, drift["median"], yerr=[drift["median"] - drift["min"], drift["max"] - drift["median"]],
                      marker="o", ms=3, capsize=2, color=plots.COLORS["batch"])
    ax[0, 3].axhline(ctx.cfg.claims.I2_stable.threshold, color="k", lw=0.6, ls="--")
    ax[0, 3].set(xscale="log", yscale="log", xlabel="learning rate", ylabel="drift BN / no BN",
                 title="I2: percentile drift ratio, per lr")
    for row, arm in ((1, "none"), (2, "batch")):
        for col, lr in enumerate(lrs):
            a = ax[row, col]
            r = select(runs, norm__name=arm, optim__lr=lr).sort_values("seed")
            if len(r):
                acts = runlog.activations(r.path.iloc[0])
                acts = acts[acts.layer == layer]
                for p, style, width in ((85, "--", 0.9), (50, "-", 1.4), (15, ":", 1.2)):
                    a.plot(acts.step, acts[f"u0_p{p}"], style, lw=width, color=plots.COLORS[arm], label=f"{p}th")
                a.set_title(f"({'bc'[row - 1]}) {plots.LABELS[arm]}, lr {lr:g}, seed {int(r.seed.iloc[0])}")
            a.set(xlabel="training step", ylabel="sigmoid input (last layer, unit 0)")
        if ax[row, 0].get_legend_handles_labels()[0]:
            ax[row, 0].legend(loc="lower left", fontsize=7, ncol=3)
    used = list(ax[1:, :len(lrs)].flat)
    lim = [min(a.get_ylim()[0] for a in used), max(a.get_ylim()[1] for a in used)]
    for a in used:
        a.set_ylim(lim)
    for a in ax[1:, len(lrs):].flat:  # fewer rates than the top row's four panels: no empty frames
        a.set_visible(False)
    return plots.save(fig, ctx.figure_path("accuracy_percentiles"))


def drift_by_lr(runs: pd.DataFrame, layer: int, units: int, after_step: float) -> pd.DataFrame:
    """I2's drift ratio BN / none at every learning rate: median, min, max and n over seeds (a reading aid)."""
    rows = []
    for lr in sorted(runs["optim.lr"].unique()):
        at = select(runs, optim__lr=lr)
        ratios = []
        for s in sorted(set(select(at, norm__name="none").seed) & set(select(at, norm__name="batch").seed)):
            d = {arm: drift(runlog.activations(select(at, norm__name=arm, seed=s).path.iloc[0]), layer, units,
                            after_step) for arm in ARMS}
            ratios.append(d["batch"] / d["none"])
        if ratios:
            rows.append({"lr": lr, "median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios),
                         "n": len(ratios)})
    return pd.DataFrame(rows, columns=["lr", "median", "min", "max", "n"])


def checkpoint_table(runs: pd.DataFrame, best: dict, steps: int) -> pd.DataFrame:
    """Per arm and learning rate: accuracy at the paper's checkpoints beside the paper's, steps to targets and
    speed, per seed; 'which' marks the rates the claims read."""
    rows = []
    tags = {("none", best.get("none")): "baseline's best", ("batch", best.get("batch")): "BN's own best"}
    for arm, lr in sorted(runs.groupby(["norm.name", "optim.lr"]).groups, key=lambda k: (k[0] != "none", k[1])):
        r = select(runs, norm__name=arm, optim__lr=lr)
        cs = curves(r)
        row = {"arm": plots.LABELS[arm], "lr": lr, "which": tags.get((arm, lr), "")}
        for s in (2500, 10000, steps):
            row[f"acc@{s}"] = list([value_at(c, s) for c in cs.values()])
            row[f"paper@{s} approx"] = PAPER.get((arm, s), math.nan)
        for t in (0.95, 0.97, 0.98):
            row[f"steps to {t:.0%}"] = list([steps_to(c, t) for c in cs.values()])
        row["steps/s"] = list(r.steps_per_s)
        rows.append(row)
    return pd.DataFrame(rows)


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    steps, layer = ctx.cfg.trainer.steps, ctx.cfg.model.depth - 1
    units = ctx.cfg.trainer.probe_units
    best = best_lr(runs, "norm.name")
    shared = best.get("none")
    arm_runs = {arm: select(runs, norm__name=arm, optim__lr=best.get(arm, math.nan)) for arm in ARMS}
    shared_runs = {arm: select(runs, norm__name=arm, optim__lr=shared) for arm in ARMS}
    drift_table = drift_by_lr(runs, layer, units, 0.05 * steps)
    ctx.write_table("drift_by_lr", drift_table,
                    "I2's drift ratio (BN / no BN) at every learning rate, over seeds (a reading aid; the claim "
                    "is judged at the baseline's best rate)")

    fig_path = draw(ctx, runs, best, layer, drift_table)
    ctx.write_table("table", checkpoint_table(runs, best, steps), "Figure 1 in numbers (median [min, max] over "
                    "seeds; paper@ approx: read off the paper's Fig. 1(a) by eye; inf, an empty cell in the CSV: never "
                    "reached)", infinite="never reached")

    findings = []
    own = {arm: curves(arm_runs[arm]) for arm in ARMS}
    seeds = sorted(set(own["none"]) & set(own["batch"]))
    to97 = {arm: [steps_to(own[arm][s], 0.97) for s in seeds] for arm in ARMS}
    speed = [ratio(b, n) for b, n in zip(to97["batch"], to97["none"], strict=True)]
    findings.append(Finding("I1_faster", speed, f"steps to 97%, per seed: BN (lr {best.get('batch'):g}) "
                            f"{plots.values(to97['batch'])} vs baseline (lr {shared:g}) {plots.values(to97['none'])}",
                            fig_path))
    gain = [100 * (value_at(own["batch"][s], steps) - value_at(own["none"][s], steps)) for s in seeds]
    findings.append(Finding("I1_accuracy", gain, "final test accuracy, BN minus baseline, in points", fig_path))
    drift_ratio = []
    for s in sorted(set(shared_runs["none"].seed) & set(shared_runs["batch"].seed)):
        d = {arm: drift(runlog.activations(select(shared_runs[arm], seed=s).path.iloc[0]), layer, units,
                        0.05 * steps) for arm in ARMS}
        drift_ratio.append(d["batch"] / d["none"])
    findings.append(Finding("I2_stable", drift_ratio, "drift ratio BN/none of the last hidden layer's "
                            "sigmoid-input percentiles", fig_path))
    return findings
