"""The sweep matrix: final accuracy against learning rate, the largest trainable rate, and speed to a target.

Shared by `lr_sweep_mlp` and `lr_sweep_cnn`; a cell is one (dataset, activation) pair, and BN and no-BN
are compared in each cell at each arm's own best learning rate and at the baseline's best rate.
"""

import math

import numpy as np
import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import best_lr, curves, done, ratio, score, select, steps_to
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def lr_max_per_seed(cell: pd.DataFrame, arm: str, fraction: float, trains_at_all: float) -> dict[int, float]:
    """Per seed, the largest learning rate at which that seed ends within `fraction` of its arm's own best median
    score (a diverged run scores chance); 0 where it never does. An arm whose best median is below
    `trains_at_all` trains nowhere: every seed gets 0."""
    r = cell[cell["norm.name"] == arm].assign(score=lambda d: score(d))
    best = r.groupby("optim.lr").score.median().max()
    ok = r[(r.score >= fraction * best) & (best >= trains_at_all)]
    return {int(s): float(ok[ok.seed == s]["optim.lr"].max()) if (ok.seed == s).any() else 0.0
            for s in sorted(r.seed.unique())}


def lr_max_ratios(cell: pd.DataFrame, fraction: float, trains_at_all: float) -> list[float]:
    """lr_max(BN) / lr_max(none) per seed: infinite only where the baseline seed trains at no rate, NaN where
    neither does."""
    plain, bn = (lr_max_per_seed(cell, arm, fraction, trains_at_all) for arm in ARMS)
    return [bn[s] / plain[s] if plain[s] else math.inf if bn[s] else math.nan for s in sorted(set(bn) & set(plain))]


def steps_per_seed(runs: pd.DataFrame, target: float) -> dict[int, float]:
    return {s: steps_to(c, target) for s, c in curves(runs).items()}


def steps_ratios(bn_runs: pd.DataFrame, plain_runs: pd.DataFrame, target: float) -> list[float]:
    """steps(BN) / steps(none) to the target, per seed (a baseline that never reaches it gives 0)."""
    bn, plain = steps_per_seed(bn_runs, target), steps_per_seed(plain_runs, target)
    return [ratio(bn[s], plain[s]) for s in sorted(set(bn) & set(plain))]


def measure_cell(cell: pd.DataFrame, cell_all: pd.DataFrame, frac: float, trains_at_all: float,
                 target: float) -> tuple[dict, dict]:
    """One (dataset, activation) cell: its per-seed ratios for the claims, and its row of the summary table."""
    best_acc = cell.assign(score=score(cell)).groupby(["norm.name", "optim.lr"]).score.median()
    best = best_lr(cell, "norm.name")
    lr_max = {arm: lr_max_per_seed(cell, arm, frac, trains_at_all) for arm in ARMS}
    own = {arm: select(cell, norm__name=arm, optim__lr=best.get(arm, math.nan)) for arm in ARMS}
    steps = {arm: steps_per_seed(own[arm], target) for arm in ARMS}
    shared_bn = select(cell, norm__name="batch", optim__lr=best.get("none", math.nan))
    ratios = {"lr": lr_max_ratios(cell, frac, trains_at_all), "speed": steps_ratios(own["batch"], own["none"], target),
              "shared": steps_ratios(shared_bn, own["none"], target)}
    med = lambda d: float(np.median(list(d.values()))) if d else math.nan  # noqa: E731
    diverged = lambda arm: int(((cell_all["norm.name"] == arm) & (cell_all.status == "diverged")).sum())  # noqa: E731
    row = {"best median acc no BN": best_acc["none"].max(), "best median acc BN": best_acc["batch"].max(),
           "best lr no BN": best.get("none"), "best lr BN": best.get("batch"),
           "median lr_max no BN": med(lr_max["none"]), "median lr_max BN": med(lr_max["batch"]),
           "median steps to target, no BN @ own": med(steps["none"]), "BN @ own": med(steps["batch"]),
           "BN @ baseline's lr": med(steps_per_seed(shared_bn, target)), "target": target,
           "diverged runs no BN": diverged("none"), "diverged runs BN": diverged("batch"),
           "failed runs": int(cell_all.status.isin(["failed", "incomplete"]).sum())}
    return ratios, row


def draw_cell(axes: tuple, cell: pd.DataFrame, title: str, frac: float, target: float) -> None:
    """Accuracy against the learning rate (diverged runs as crosses, each arm's trainable floor), curves at each
    arm's own best rate, and the last layer's unit-0 percentiles there (first seed); the legends are the figure's
    (`draw_sweep`), the same for every cell."""
    ax, ax_curve, ax_pct = axes
    best_acc = cell.assign(score=score(cell)).groupby(["norm.name", "optim.lr"]).score.median()
    best = best_lr(cell, "norm.name")
    for col, arm in enumerate(ARMS):
        r = cell[cell["norm.name"] == arm].assign(score=lambda d: score(d))
        plots.errorbar(ax, r.groupby("optim.lr").score, plots.COLORS[arm], plots.LABELS[arm])
        div = r[r.status == "diverged"].groupby("optim.lr").size()
        if len(div):
            ax.scatter(div.index, np.zeros(len(div)), marker="x", s=30, color=plots.COLORS[arm],
                       label=f"{plots.LABELS[arm]} diverged")
        ax.axhline(frac * best_acc[arm].max(), color=plots.COLORS[arm], lw=0.6, ls="--",
                   label=f"{frac:.0%} of {plots.LABELS[arm]}'s best")
        curve_runs = select(cell, norm__name=arm, optim__lr=best.get(arm, math.nan))
        plots.band(ax_curve, list(curves(curve_runs).values()), "step", "test_acc", plots.COLORS[arm],
                   plots.LABELS[arm])
        if len(curve_runs):
            acts = runlog.activations(curve_runs.sort_values("seed").path.iloc[0])
            a = acts[acts.layer == acts.layer.max()]
            for p, style in ((15, ":"), (50, "-"), (85, ":")):
                ax_pct[col].plot(a.step, a[f"u0_p{p}"], style, color=plots.COLORS[arm], label=f"{p}th")
            ax_pct[col].set(title=f"{title}, {plots.LABELS[arm]} lr {best[arm]:g}", xlabel="step",
                            ylabel="input of last nonlinearity")
    ax.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy", title=title, ylim=(0, 1))
    ax_curve.axhline(target, color="k", lw=0.6, ls="--", label="target accuracy")
    ax_curve.set(xlabel="step", ylabel="test accuracy", title=f"{title}\nown best lr: "
                 + ", ".join(f"{plots.LABELS[arm]} {best.get(arm, math.nan):g}" for arm in ARMS))


def draw_steps_to_target(rows: list[dict], arch: str):
    fig, ax = plots.subplots(1, width=1.6 * len(rows) + 2)
    x = np.arange(len(rows))
    for k, (key, arm, label) in enumerate([("median steps to target, no BN @ own", "none", "no BN, own best lr"),
                                            ("BN @ own", "batch", "BN, own best lr"),
                                            ("BN @ baseline's lr", "batch", "BN, baseline's lr")]):
        vals = [r[key] if math.isfinite(r[key]) else 0 for r in rows]
        ax[0, 0].bar(x + (k - 1) * 0.27, vals, 0.27, color=plots.COLORS[arm], alpha=[1, 1, 0.5][k], label=label,
                     hatch=[None, None, "//"][k])
    ax[0, 0].set(xticks=x, xticklabels=[f"{r['data']}\n{r['activation']}" for r in rows],
                 ylabel="steps to target (median; 0 = never)", title=f"{arch}: steps to target accuracy")
    ax[0, 0].legend(fontsize=7)
    return fig


def draw_sweep(ctx: Context, runs: pd.DataFrame, cells: list, frac: float, targets: dict) -> str:
    """Per cell: accuracy against the learning rate, curves at each arm's best rate and the percentiles there,
    one figure each, each with one legend below its panels; returns the path of the first."""
    arch = ctx.cfg.model.arch
    fig_lr, ax_lr = plots.subplots(len(cells), width=3.0)
    fig_curve, ax_curve = plots.subplots(len(cells), width=3.0)
    fig_pct, ax_pct = plots.subplots(len(cells), 2, width=3.0, height=2.2)
    for i, (data, act) in enumerate(cells):
        draw_cell((ax_lr[0, i], ax_curve[0, i], ax_pct[:, i]), select(runs, data__name=data, model__activation=act),
                  f"{arch}: {data}, {act}", frac, targets[data])
    labels = [plots.LABELS[arm] for arm in ARMS]
    plots.shared_legend(fig_lr, ncol=3, order=[*labels, *(f"{frac:.0%} of {label}'s best" for label in labels),
                                               *(f"{label} diverged" for label in labels)])
    plots.shared_legend(fig_curve)
    fig_path = plots.save(fig_lr, ctx.figure_path("accuracy_vs_lr"))
    plots.save(fig_curve, ctx.figure_path("curves_best_lr"))
    plots.save(fig_pct, ctx.figure_path("percentiles"))
    return fig_path


def analyze_sweep(ctx: Context, lr_claim: str, speed_claim: str, shared_claim: str | None = None) -> list[Finding]:
    runs = done(ctx.runs)
    cells = sorted(runs.groupby(["data.name", "model.activation"]).groups)
    arch, claims = ctx.cfg.model.arch, ctx.cfg.claims
    frac, trains_at_all = claims[lr_claim].params.trainable_fraction, claims[lr_claim].params.trains_at_all
    targets = {data: claims[speed_claim].params[f"target_{data}"] for data, _ in cells}
    fig_path = draw_sweep(ctx, runs, cells, frac, targets)
    rows: list[dict] = []
    ratios: dict[str, dict[str, list[float]]] = {"lr": {}, "speed": {}, "shared": {}}
    for data, act in cells:
        cell_ratios, row = measure_cell(select(runs, data__name=data, model__activation=act),
                                        select(ctx.runs, data__name=data, model__activation=act), frac,
                                        trains_at_all, targets[data])
        for key, values in cell_ratios.items():
            ratios[key][f"{data}/{act}"] = values
        rows.append({"data": data, "activation": act, **row})
    ctx.write_table("summary", pd.DataFrame(rows), f"{arch} sweep per cell: best rates, median over seeds of the "
                    "largest trainable rate and of the steps to the target (inf, an empty cell in the CSV: never "
                    "reached)", infinite="never reached")
    speed = runs.groupby(["data.name", "model.activation", "norm.name"]).steps_per_s.median().round(0)
    ctx.write_table("steps_per_s", speed.reset_index(), f"{arch} training speed: median steps/s over all runs "
                    "of a configuration (1 thread per run, 2 runs in parallel)")
    speed_fig = plots.save(draw_steps_to_target(rows, arch), ctx.figure_path("steps_to_target"))
    findings = [
        Finding(lr_claim, ratios["lr"], "lr_max(BN) / lr_max(none) per seed, each arm judged against its own best",
                fig_path),
        Finding(speed_claim, ratios["speed"], "steps to the target, BN / none, each at its own best rate, per seed",
                speed_fig),
    ]
    if shared_claim:
        findings.append(Finding(shared_claim, ratios["shared"], "steps to the target, BN / none, both at the "
                                "baseline's best rate, per seed", speed_fig))
    return findings
