"""Ioffe §3.2 and the write-up's question: are the nonlinearity's inputs more Gaussian with BN than without? Per-unit
skewness, excess kurtosis, Jarque-Bera; and Ioffe's own comparison, Wu + b against the layer input u (a reading aid)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import by_seed, done, paired, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")
TITLES = {"skew": "skewness of x", "excess_kurtosis": "excess kurtosis of x", "jarque_bera": "Jarque-Bera of x",
          "abs_kurtosis_wu": "|kurtosis| of Wu + b", "abs_kurtosis_u": "|kurtosis| of u"}  # x: the nonlinearity's input
STATS = tuple(TITLES)  # the figure's columns and the table's, in this order


def wu_over_u(run) -> float:
    """At the end of training, median |excess kurtosis| of Wu + b over that of u, per hidden layer after the first
    (the first layer's u is the image), then the median over those layers: one value per run."""
    acts = runlog.activations(run.path)
    a = acts[(acts.layer > 0) & (acts.step == acts.step.max())]
    return float(np.median(a.abs_kurtosis_wu / a.abs_kurtosis_u)) if len(a) else float("nan")


def last_layer_kurtosis(run) -> float:
    """At the end of training, the median over the last hidden layer's units of |excess kurtosis| of the
    nonlinearity's input (with BN the normalised value, whose per-unit shape on the probe batch is Wu's)."""
    acts = runlog.activations(run.path)
    a = acts[(acts.layer == acts.layer.max()) & (acts.step == acts.step.max())]
    return float(a.abs_kurtosis.iloc[0]) if len(a) else math.nan


def draw(ctx: Context, runs: pd.DataFrame, acts_fns: list[str]) -> Path:
    """Each statistic of the last hidden layer over training, a row per activation, both arms."""
    stats = STATS
    fig, ax = plots.subplots(len(stats), len(acts_fns), width=3.0, height=2.4)
    for i, act in enumerate(acts_fns):
        for arm in ARMS:
            r = select(runs, model__activation=act, norm__name=arm)
            tables = [runlog.activations(p) for p in r.path]
            last = [t[t.layer == t.layer.max()] for t in tables]
            for j, stat in enumerate(stats):
                plots.band(ax[i, j], last, "step", stat, plots.COLORS[arm], plots.LABELS[arm])
                ax[i, j].set(title=f"{act}: {TITLES[stat]}", xlabel="step",
                             ylabel="median over units" if j == 0 else None)
        ax[i, 2].set_yscale("log")
    plots.shared_legend(fig)  # below the panels, off the bands
    fig.suptitle("Last hidden layer, per-unit shape over training (median and min-max over seeds)")
    return plots.save(fig, ctx.figure_path("moments"))


def write_final_moments(ctx: Context, runs: pd.DataFrame) -> None:
    """Each statistic per activation, arm and layer at the end of training."""
    stats = STATS
    rows = []
    for _, r in runs.iterrows():
        a = runlog.activations(r.path)
        a = a[a.step == a.step.max()]
        for _, row in a.iterrows():
            rows.append({"activation": r["model.activation"], "arm": r["norm.name"], "layer": int(row.layer) + 1,
                         **{s: row[s] for s in stats}})
    t = pd.DataFrame(rows).groupby(["activation", "arm", "layer"])[list(stats)].median().round(3).reset_index()
    ctx.write_table("final_moments", t, "Per-unit shape of pre-activations at the end of training "
                    "(median over units, then over seeds; Jarque-Bera ~ chi2(2) for a Gaussian: 5.99 at p = 0.05)")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    acts_fns = sorted(runs["model.activation"].unique())
    fig_path = draw(ctx, runs, acts_fns)
    write_final_moments(ctx, runs)
    # the claim: BN over no BN, paired by seed, a cell per activation (the write-up's question)
    kurt = {(act, arm): by_seed(runs, last_layer_kurtosis, model__activation=act, norm__name=arm)
            for act in acts_fns for arm in ARMS}
    cells = {act: paired(kurt[act, "batch"], kurt[act, "none"], lambda b, n: b / n if n else math.nan)
             for act in acts_fns}
    # Ioffe's own sentence (Wu + b against u) is a reading aid only: the CLT makes it hold with or without BN
    wu_u = {(act, arm): [wu_over_u(r) for _, r in select(runs, model__activation=act, norm__name=arm).iterrows()]
            for act in acts_fns for arm in ARMS}
    wu_u = "; ".join(f"{act}, {plots.LABELS[arm]} {plots.values(v)}" for (act, arm), v in wu_u.items())
    shown = "; ".join(f"{act}: BN {plots.values(list(kurt[act, 'batch'].values()))}, no BN "
                      f"{plots.values(list(kurt[act, 'none'].values()))}" for act in acts_fns)
    return [Finding("I_more_gaussian", cells, "median over the last hidden layer's units of |excess kurtosis| of "
                    f"the nonlinearity's input at the end of training, BN over no BN, per seed ({shown}). Reading "
                    "aid, not counted (Ioffe's Wu + b against u, median over hidden layers after the first of the "
                    f"ratio, per seed): {wu_u}", fig_path)]
