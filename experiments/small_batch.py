"""Small batches in an MLP: LayerNorm against BN, each against the un-normalised control (Ba et al. 2016 §6.6)."""

from bnlab import plots
from bnlab.analysis import done, drop_beyond_control, score
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "layer")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    sizes = sorted(int(b) for b in runs["trainer.batch_size"].unique())
    fig_path = plots.save(plots.accuracy_vs_batch(runs, ARMS, score, "MNIST, 2 x 256 ReLU MLP, one epoch"),
                          ctx.figure_path("accuracy_vs_batch"))
    table = runs.pivot_table(index="norm.name", columns="trainer.batch_size", values="final_test_acc",
                             aggfunc=list).reset_index()
    ctx.write_table("final_acc", table, "MLP: final test accuracy by normaliser and batch size")
    lo, hi = min(sizes), max(sizes)
    return [
        Finding("LN_robust", drop_beyond_control(runs, "layer", hi, lo),
                f"(LN({hi}) - LN({lo})) - (none({hi}) - none({lo})), points, per seed; contrast: the same for BN",
                fig_path, contrast=drop_beyond_control(runs, "batch", hi, lo)),
        Finding("BN_small_batch_mlp", drop_beyond_control(runs, "batch", hi, lo),
                f"(BN({hi}) - BN({lo})) - (none({hi}) - none({lo})), points, per seed (not tested with power: one "
                "epoch of MNIST leaves the control at its ceiling)", fig_path),
    ]
