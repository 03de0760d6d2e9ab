"""Ioffe §3.2: is Wu + b more Gaussian than the layer input u? Per-unit skewness, excess kurtosis, Jarque-Bera."""

import numpy as np
import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import done, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")
TITLES = {"skew": "skewness of x", "excess_kurtosis": "excess kurtosis of x", "jarque_bera": "Jarque-Bera of x",
          "abs_kurtosis_wu": "|kurtosis| of Wu + b", "abs_kurtosis_u": "|kurtosis| of u"}  # x: the nonlinearity's input


def wu_over_u(run) -> float:
    """At the end of training, median |excess kurtosis| of Wu + b over that of u, per hidden layer after the first
    (the first layer's u is the image), then the median over those layers: one value per run."""
    acts = runlog.activations(run.path)
    a = acts[(acts.layer > 0) & (acts.step == acts.step.max())]
    return float(np.median(a.abs_kurtosis_wu / a.abs_kurtosis_u)) if len(a) else float("nan")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    acts_fns = sorted(runs["model.activation"].unique())
    stats = ("skew", "excess_kurtosis", "jarque_bera", "abs_kurtosis_wu", "abs_kurtosis_u")
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
        ax[i, 0].legend(fontsize=7)
    fig.suptitle("Last hidden layer, per-unit shape over training (median and min-max over seeds)")
    fig_path = plots.save(fig, ctx.figure_path("moments"))
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
    cells = {f"{act}, {plots.LABELS[arm]}": [wu_over_u(r) for _, r in select(runs, model__activation=act,
                                                                            norm__name=arm).iterrows()]
             for act in acts_fns for arm in ARMS}
    return [Finding("I_more_gaussian", cells, "median |excess kurtosis| of Wu + b over that of u (hidden layers "
                    "after the first, end of training), per seed", fig_path)]
