"""Ba et al. 2016 §6.7: LayerNorm, BN and no normalisation in a CIFAR-10 CNN."""

from bnlab import figures, plots
from bnlab.analysis import best_lr, done, paired_steps_ratio, score_difference
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "layer")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    target = ctx.cfg.claims.LN_speedup_cnn.params.target
    fig, ax = plots.subplots(len(lrs), width=3.2)
    figures.curves_by_lr(ax[0], runs, ARMS, lrs, "test_acc", (0, 0.8), "CIFAR-10 CNN 16-32-64 ReLU", target)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    figures.final_accuracy_table(ctx, runs, "LayerNorm, BN and none in a CIFAR-10 CNN")
    best = best_lr(runs, "norm.name")
    speedup = paired_steps_ratio(runs, "layer", "none", target, arm_lr=best["layer"], reference_lr=best["none"])
    at_best = lambda arm: {"norm__name": arm, "optim__lr": best[arm]}  # noqa: E731
    rates = f"best rates: none {best['none']:g}, BN {best['batch']:g}, LN {best['layer']:g}"
    return [
        Finding("LN_speedup_cnn", speedup, f"steps to {target:.0%} test accuracy, LN / none, per seed ({rates})",
                fig_path),
        Finding("BN_beats_ln_cnn", score_difference(runs, at_best("batch"), at_best("layer")),
                f"BN minus LN, final test accuracy, points, per seed ({rates})", fig_path),
    ]
