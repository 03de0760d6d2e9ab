"""Ba et al. 2016 §6.6: LayerNorm against BN on permutation-invariant MNIST."""

import math

from bnlab import figures, plots
from bnlab.analysis import best_lr, done, paired_steps_ratio
from bnlab.claims import Context, Finding

ARMS = ("batch", "layer")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    target = ctx.cfg.claims.LN_faster_than_bn.params.target
    fig, axes = plots.panels(len(lrs), width=3.7)
    figures.curves_by_lr(axes, runs, ARMS, lrs, "test_acc", (0.9, 1), "2 x 256 ReLU MLP, batch 128", target)
    plots.shared_legend(fig)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    figures.final_accuracy_table(ctx, runs, "LayerNorm vs BN, MNIST MLP")
    best = best_lr(runs, "norm.name")
    cells = {f"lr {lr:g}": paired_steps_ratio(runs, "layer", "batch", target, arm_lr=lr, reference_lr=lr)
             for lr in lrs}
    cells["each at its best lr"] = paired_steps_ratio(runs, "layer", "batch", target, arm_lr=best["layer"],
                                                      reference_lr=best["batch"])
    untestable = {cell: f"neither arm reaches {target:.0%} in {ctx.cfg.trainer.steps} steps in "
                        f"{sum(math.isnan(v) for v in vs)} of {len(vs)} seeds (the ratio is inf / inf)"
                  for cell, vs in cells.items() if any(math.isnan(v) for v in vs)}
    return [Finding("LN_faster_than_bn", cells, f"steps to {target:.0%} test accuracy, LN / BN, per seed (best "
                    f"rates: LN {best['layer']:g}, BN {best['batch']:g})", fig_path, untestable=untestable)]
