"""MLP half of the sweep matrix (configs/experiment/lr_sweep_mlp.yaml); the analysis is experiments.lr_sweep."""

from bnlab.claims import Context, Finding
from bnlab.lr_sweep import analyze_sweep


def analyze(ctx: Context) -> list[Finding]:
    return analyze_sweep(ctx, "I4_lr_range", "I3_speed", "I3_speed_shared_lr")
