"""Ioffe §3.2: are BN's pre-activations more Gaussian? Per-unit skewness, excess kurtosis, Jarque-Bera."""

import pandas as pd

from bnlab import collect, plots
from bnlab.analysis import done, paired_ratio, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def last_layer_kurtosis(run) -> float:
    acts = collect.activations(run.path)
    a = acts[(acts.layer == acts.layer.max()) & (acts.step == acts.step.max())]
    return abs(float(a.excess_kurtosis.iloc[0]))


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    acts_fns = sorted(runs["model.activation"].unique())
    stats = ("skew", "excess_kurtosis", "jarque_bera")
    fig, ax = plots.subplots(len(stats), len(acts_fns), width=3.0, height=2.4)
    for i, act in enumerate(acts_fns):
        for arm in ARMS:
            r = select(runs, model__activation=act, norm__name=arm)
            tables = [collect.activations(p) for p in r.path]
            last = [t[t.layer == t.layer.max()] for t in tables]
            for j, stat in enumerate(stats):
                plots.band(ax[i, j], last, "step", stat, plots.COLORS[arm], plots.LABELS[arm])
                ax[i, j].set(title=f"{act}: last hidden layer, {stat.replace('_', ' ')}", xlabel="step")
        ax[i, 2].set_yscale("log")
        ax[i, 0].legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("moments"))
    rows = []
    for _, r in runs.iterrows():
        a = collect.activations(r.path)
        a = a[a.step == a.step.max()]
        for _, row in a.iterrows():
            rows.append({"activation": r["model.activation"], "arm": r["norm.name"], "layer": int(row.layer) + 1,
                         **{s: row[s] for s in stats}})
    t = pd.DataFrame(rows).groupby(["activation", "arm", "layer"])[list(stats)].median().round(3).reset_index()
    ctx.write_table("final_moments", t, "Per-unit shape of pre-activations at the end of training "
                    "(median over units, then over seeds; Jarque-Bera ~ chi2(2) for a Gaussian: 5.99 at p = 0.05)")
    return [Finding("I_more_gaussian", paired_ratio(runs, "batch", "none", last_layer_kurtosis,
                                                    ("model.activation", "seed")),
                    "|excess kurtosis| of the last hidden layer, BN / none, per activation and seed", fig_path)]
