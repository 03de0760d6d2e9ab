"""CNN half of the sweep matrix (configs/experiment/lr_sweep_cnn.yaml); the analysis is bnlab.lr_sweep, with cells
that have no ratio marked not testable as in bnlab.experiments.lr_sweep_mlp."""

from bnlab.claims import Context, Finding
from bnlab.experiments.lr_sweep_mlp import mark_untestable
from bnlab.lr_sweep import analyze_sweep


def analyze(ctx: Context) -> list[Finding]:
    return [mark_untestable(f, ctx.cfg.trainer.steps) for f in analyze_sweep(ctx, "I4_lr_range_cnn", "I3_speed_cnn")]
