"""Ioffe 2017 §4.2: BN and Batch Renorm trained on non-i.i.d. batches, scored with population statistics."""

from bnlab import plots
from bnlab.analysis import curves, done, score_difference, select
from bnlab.claims import Context, Finding

ARMS = ("batch", "batch_renorm")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    kinds = sorted(int(k) for k in runs["trainer.classes_per_batch"].unique())
    fig, ax = plots.subplots(len(kinds), width=3.4)
    for i, k in enumerate(kinds):
        for arm in ARMS:
            plots.band(ax[0, i], list(curves(select(runs, norm__name=arm, trainer__classes_per_batch=k)).values()),
                       "step", "test_acc", plots.COLORS[arm], plots.LABELS[arm])
        ax[0, i].set(title="i.i.d. batches" if k == 0 else f"batches of {k} classes", xlabel="step",
                     ylabel="test accuracy (running statistics)", ylim=(0, 1))
        ax[0, i].legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    table = runs.pivot_table(index="norm.name", columns="trainer.classes_per_batch", values="final_test_acc",
                             aggfunc=list).reset_index()
    ctx.write_table("final_acc", table, "Final test accuracy by normaliser and classes per batch (0: i.i.d.)")
    non_iid = max(kinds)
    at = lambda arm, k: {"norm__name": arm, "trainer__classes_per_batch": k}  # noqa: E731
    return [
        Finding("BN_non_iid_hurts", score_difference(runs, at("batch", 0), at("batch", non_iid)),
                f"BN i.i.d. minus BN on {non_iid}-class batches, points, per seed", fig_path),
        Finding("BRN_non_iid", score_difference(runs, at("batch_renorm", non_iid), at("batch", non_iid)),
                f"Batch Renorm minus BN, both on {non_iid}-class batches, points, per seed", fig_path),
    ]
