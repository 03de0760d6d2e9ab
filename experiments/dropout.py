"""Ioffe §3.4: does BN reduce the need for dropout? Test accuracy and train-test gap by dropout rate, on a
training set small enough to overfit."""

import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import done, final_score
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    rates = sorted(runs["model.dropout"].unique())
    rows = []
    for _, r in runs.iterrows():
        m = runlog.metrics(r.path).iloc[-1]
        rows.append({"arm": r["norm.name"], "dropout": r["model.dropout"], "seed": int(r.seed),
                     "test": final_score(r), "gap": m.train_eval_acc - m.test_acc})
    t = pd.DataFrame(rows)
    fig, ax = plots.subplots(2, width=3.3)
    for arm in ARMS:
        g = t[t.arm == arm].groupby("dropout")
        for k, col in enumerate(("test", "gap")):
            plots.errorbar(ax[0, k], g[col], plots.COLORS[arm], plots.LABELS[arm])
    ax[0, 0].set(xlabel="dropout p", ylabel="final test accuracy",
                 title=f"3 x 256 ReLU MLP, {ctx.cfg.data.train_size or 'all'} MNIST examples")
    ax[0, 1].set(xlabel="dropout p", ylabel="train (eval mode) - test accuracy", title="generalisation gap")
    for a in ax[0]:
        a.legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("accuracy_gap"))
    summary = t.groupby(["arm", "dropout"]).agg(test=("test", list), gap=("gap", list))
    ctx.write_table("summary", summary.reset_index(), "Dropout with and without BN (median [min, max] over seeds)")
    gains = {arm: [] for arm in ARMS}
    for seed in sorted(t.seed.unique()):
        for arm in ARMS:
            s = t[(t.arm == arm) & (t.seed == seed)].set_index("dropout").test
            with_dropout = [s[p] for p in rates if p > 0 and p in s]
            gains[arm].append(100 * (max(with_dropout) - s[0.0]) if 0.0 in s and with_dropout else float("nan"))
    return [
        Finding("I6_dropout_helps_plain", gains["none"], "best dropout gain without BN, points, per seed", fig_path),
        Finding("I6_less_dropout_needed", [a - b for a, b in zip(gains["none"], gains["batch"], strict=True)],
                "best dropout gain without BN minus with BN, points, per seed", fig_path),
    ]
