"""Small batches: BN against LayerNorm, GroupNorm and Batch Renormalization (Ba 2016, Wu & He 2018, Ioffe 2017)."""

from bnlab import plots
from bnlab.analysis import done, final_score, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "layer", "group", "batch_renorm")


def per_seed(runs, arm: str, bs: int) -> dict:
    return {int(r.seed): final_score(r) for _, r in select(runs, norm__name=arm, trainer__batch_size=bs).iterrows()}


def difference(runs, a: tuple, b: tuple) -> list[float]:
    """Points of (arm, batch) a minus (arm, batch) b, paired by seed."""
    x, y = per_seed(runs, *a), per_seed(runs, *b)
    return [100 * (x[s] - y[s]) for s in sorted(set(x) & set(y))]


def analyze(ctx: Context) -> list[Finding]:
    runs = ctx.runs
    sizes = sorted(int(b) for b in runs["trainer.batch_size"].unique())
    finished = done(runs)
    fig, ax = plots.subplots(1, width=4.5)
    for arm in ARMS:
        r = finished[finished["norm.name"] == arm].assign(score=lambda d: d.apply(final_score, axis=1))
        g = r.groupby("trainer.batch_size").score
        plots.errorbar(ax[0, 0], g, plots.COLORS[arm], plots.LABELS[arm])
    ax[0, 0].set(xscale="log", xticks=sizes, xticklabels=sizes, xlabel="batch size (lr scaled linearly)",
                 ylabel="test accuracy after one epoch", title="MNIST, 2 x 256 ReLU MLP")
    ax[0, 0].legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("accuracy_vs_batch"))
    table = finished.pivot_table(index="norm.name", columns="trainer.batch_size", values="final_test_acc",
                                 aggfunc=plots.median_range).reset_index()
    ctx.write_table("final_acc", table, "Test accuracy after one epoch by normaliser and batch size")
    lo, hi = min(sizes), max(sizes)
    return [
        Finding("GN_bn_degrades", difference(finished, ("batch", hi), ("batch", lo)), f"BN({hi}) - BN({lo})",
                fig_path),
        Finding("LN_robust", difference(finished, ("layer", hi), ("layer", lo)), f"LN({hi}) - LN({lo})", fig_path),
        Finding("GN_beats_bn_small", difference(finished, ("group", lo), ("batch", lo)), f"GN({lo}) - BN({lo})",
                fig_path),
        Finding("BRN_recovers", difference(finished, ("batch_renorm", lo), ("batch", lo)),
                f"BRN({lo}) - BN({lo})", fig_path),
    ]
