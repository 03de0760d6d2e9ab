"""The sweep matrix: final accuracy against learning rate, the largest trainable rate, and speed to a target.

Shared by `lr_sweep_mlp` and `lr_sweep_cnn`; a cell is one (dataset, activation) pair, and BN and no-BN
are compared in each cell at each arm's own best learning rate and at the baseline's best rate.
"""

import math

import numpy as np
import pandas as pd

from bnlab import collect, plots
from bnlab.analysis import best_lr, curves, done, ratio, score, select, steps_to
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def trainable_lr_max(cell: pd.DataFrame, arm: str, floor: float) -> float:
    """Largest learning rate at which every seed of the arm ends at or above `floor`; 0 if none does."""
    r = cell[cell["norm.name"] == arm]
    ok = r.assign(score=score(r)).groupby("optim.lr").score.min()
    ok = ok[ok >= floor]
    return float(ok.index.max()) if len(ok) else 0.0


def median_steps(runs: pd.DataFrame, target: float) -> tuple[float, list[float]]:
    per_seed = [steps_to(c, target) for c in curves(runs).values()]
    return (float(np.median(per_seed)) if per_seed else math.nan), per_seed


def analyze_sweep(ctx: Context, lr_claim: str, speed_claim: str, shared_claim: str | None = None) -> list[Finding]:
    runs = done(ctx.runs)
    all_runs = ctx.runs
    cells = sorted(runs.groupby(["data.name", "model.activation"]).groups)
    arch = ctx.cfg.model.arch
    frac = ctx.cfg.claims[lr_claim].params.trainable_fraction
    targets = ctx.cfg.claims[speed_claim].params

    fig_lr, ax_lr = plots.subplots(len(cells), width=3.0)
    fig_curve, ax_curve = plots.subplots(len(cells), width=3.0)
    fig_pct, ax_pct = plots.subplots(len(cells), 2, width=3.0, height=2.2)
    rows, lr_ratios, speed_ratios, shared_ratios = [], [], [], []
    for i, (data, act) in enumerate(cells):
        cell = select(runs, data__name=data, model__activation=act)
        cell_all = select(all_runs, data__name=data, model__activation=act)
        best_acc = cell.assign(score=score(cell)).groupby(["norm.name", "optim.lr"]).score.median().max()
        floor = frac * best_acc
        best = best_lr(cell, "norm.name")
        target = targets[f"target_{data}"]
        ax = ax_lr[0, i]
        for arm in ARMS:
            r = cell[cell["norm.name"] == arm].assign(score=lambda d: score(d))
            g = r.groupby("optim.lr").score
            plots.errorbar(ax, g, plots.COLORS[arm], plots.LABELS[arm])
            div = r[r.status == "diverged"].groupby("optim.lr").size()
            if len(div):
                ax.scatter(div.index, np.zeros(len(div)), marker="x", s=30, color=plots.COLORS[arm],
                           label=f"{plots.LABELS[arm]} diverged")
            curve_runs = select(cell, norm__name=arm, optim__lr=best.get(arm, math.nan))
            plots.band(ax_curve[0, i], list(curves(curve_runs).values()), "step", "test_acc", plots.COLORS[arm],
                       f"{plots.LABELS[arm]} (lr {best.get(arm, math.nan):g})")
            if len(curve_runs):
                acts = collect.activations(curve_runs.sort_values("seed").path.iloc[0])
                a = acts[acts.layer == acts.layer.max()]
                col = ARMS.index(arm)
                for p, style in ((15, ":"), (50, "-"), (85, ":")):
                    ax_pct[col, i].plot(a.step, a[f"u0_p{p}"], style, color=plots.COLORS[arm], label=f"{p}th")
                ax_pct[col, i].set(title=f"{data} {act}, {plots.LABELS[arm]} lr {best[arm]:g}", xlabel="step",
                                   ylabel="input of last nonlinearity")
        ax.axhline(floor, color="k", lw=0.6, ls="--", label=f"{frac:.0%} of best")
        ax.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy", title=f"{arch}: {data}, {act}",
               ylim=(0, 1))
        ax.legend(fontsize=6)
        ax_curve[0, i].axhline(target, color="k", lw=0.6, ls="--")
        ax_curve[0, i].set(xlabel="step", ylabel="test accuracy", title=f"{arch}: {data}, {act} (own best lr)")
        ax_curve[0, i].legend(fontsize=7)

        lr_max = {arm: trainable_lr_max(cell, arm, floor) for arm in ARMS}
        lr_ratios.append(ratio(lr_max["batch"], lr_max["none"]) if lr_max["none"] else
                         (math.inf if lr_max["batch"] else math.nan))
        steps = {arm: median_steps(select(cell, norm__name=arm, optim__lr=best.get(arm, math.nan)), target)[0]
                 for arm in ARMS}
        shared = median_steps(select(cell, norm__name="batch", optim__lr=best.get("none", math.nan)), target)[0]
        speed_ratios.append(ratio(steps["batch"], steps["none"]))
        shared_ratios.append(ratio(shared, steps["none"]))
        rows.append({
            "data": data, "activation": act, "best acc (median)": f"{best_acc:.3f}",
            "lr_max no BN": lr_max["none"], "lr_max BN": lr_max["batch"],
            "best lr no BN": best.get("none"), "best lr BN": best.get("batch"),
            "steps to target, no BN @ own": steps["none"], "BN @ own": steps["batch"],
            "BN @ baseline's lr": shared, "target": target,
            "diverged runs no BN / BN": "{} / {}".format(*[int(((cell_all["norm.name"] == a) &
                                                               (cell_all.status == "diverged")).sum())
                                                             for a in ARMS]),
            "failed runs": int(cell_all.status.isin(["failed", "incomplete"]).sum()),
        })
    fig_path = plots.save(fig_lr, ctx.figure_path("accuracy_vs_lr"))
    plots.save(fig_curve, ctx.figure_path("curves_best_lr"))
    plots.save(fig_pct, ctx.figure_path("percentiles"))
    ctx.write_table("summary", pd.DataFrame(rows), f"{arch} sweep per cell: largest trainable learning rate, "
                    "best rates, median steps to the target (inf: never reached)")
    speed = runs.groupby(["data.name", "model.activation", "norm.name"]).steps_per_s.median().round(0)
    ctx.write_table("steps_per_s", speed.reset_index(), f"{arch} training speed: median steps/s over all runs "
                    "of a configuration (1 thread per run, 2 runs in parallel)")

    # steps-to-target bars
    fig, ax = plots.subplots(1, width=1.6 * len(cells) + 2)
    labels = [f"{r['data']}\n{r['activation']}" for r in rows]
    x = np.arange(len(rows))
    for k, (key, arm, label) in enumerate([("steps to target, no BN @ own", "none", "no BN, own best lr"),
                                            ("BN @ own", "batch", "BN, own best lr"),
                                            ("BN @ baseline's lr", "batch", "BN, baseline's lr")]):
        vals = [r[key] if math.isfinite(r[key]) else 0 for r in rows]
        ax[0, 0].bar(x + (k - 1) * 0.27, vals, 0.27, color=plots.COLORS[arm], alpha=[1, 1, 0.5][k], label=label,
                     hatch=[None, None, "//"][k])
    ax[0, 0].set(xticks=x, xticklabels=labels, ylabel="steps to target (median; 0 = never)",
                 title=f"{arch}: steps to target accuracy")
    ax[0, 0].legend(fontsize=7)
    speed_fig = plots.save(fig, ctx.figure_path("steps_to_target"))

    names = [f"{r['data']}/{r['activation']}" for r in rows]
    findings = [
        Finding(lr_claim, lr_ratios, "lr_max(BN)/lr_max(none) per cell " + str(dict(zip(names, lr_ratios,
                                                                                       strict=True))), fig_path),
        Finding(speed_claim, speed_ratios, "median steps BN/none per cell " + str(dict(zip(names, speed_ratios,
                                                                                          strict=True))), speed_fig),
    ]
    if shared_claim:
        findings.append(Finding(shared_claim, shared_ratios, "median steps BN/none at the baseline's best lr "
                                + str(dict(zip(names, shared_ratios, strict=True))), speed_fig))
    return findings
