"""Small batches in a CNN: BN against GroupNorm and Batch Renorm (Wu & He 2018; Ioffe 2017)."""

from bnlab import plots
from bnlab.analysis import done, drop_beyond_control, score, score_difference
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "group", "batch_renorm")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    sizes = sorted(int(b) for b in runs["trainer.batch_size"].unique())
    lo, hi = min(sizes), max(sizes)
    examples = int((runs["trainer.steps"] * runs["trainer.batch_size"]).max())
    fig_path = plots.save(plots.accuracy_vs_batch(runs, ARMS, score, f"MNIST CNN, {examples:,} examples"),
                          ctx.figure_path("accuracy_vs_batch"))
    table = runs.pivot_table(index="norm.name", columns="trainer.batch_size", values="final_test_acc",
                             aggfunc=list).reset_index()
    ctx.write_table("final_acc", table, "CNN: final test accuracy by normaliser and batch size")
    at = lambda arm, bs: {"norm__name": arm, "trainer__batch_size": bs}  # noqa: E731
    power = f"not tested with power: the MNIST CNN on {examples:,} examples sits at its ~95% ceiling"
    return [
        Finding("GN_bn_degrades", drop_beyond_control(runs, "batch", hi, lo),
                f"(BN({hi}) - BN({lo})) - (none({hi}) - none({lo})), points, per seed ({power})", fig_path),
        Finding("GN_beats_bn_small", score_difference(runs, at("group", lo), at("batch", lo)),
                f"GN({lo}) - BN({lo}), points, per seed ({power}; BN does not degrade at batch {lo})", fig_path),
        Finding("GN_close_at_32", score_difference(runs, at("group", hi), at("batch", hi)),
                f"GN({hi}) - BN({hi}), points, per seed; contrast: none({hi}) - BN({hi})", fig_path,
                contrast=score_difference(runs, at("none", hi), at("batch", hi))),
        Finding("BRN_recovers", score_difference(runs, at("batch_renorm", lo), at("batch", lo)),
                f"BRN({lo}) - BN({lo}), points, per seed ({power}; BN does not degrade at batch {lo})", fig_path),
    ]
