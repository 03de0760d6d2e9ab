"""MLP half of the sweep matrix (configs/experiment/lr_sweep_mlp.yaml); the analysis is bnlab.lr_sweep, and a cell
whose ratio does not exist (a baseline that never reaches the target, an arm that trains at no rate) is returned as
not testable, with why, instead of the 0 or infinity the shared analysis writes for it."""

import math

from bnlab.claims import Context, Finding
from bnlab.lr_sweep import analyze_sweep


def mark_untestable(f: Finding, steps: int) -> Finding:
    """Steps ratios: 0 (the baseline never reached the target: BN over infinity), inf (BN never did) and NaN
    (neither did) have no effect size; lr_max ratios: inf (the baseline trains at no rate) and NaN (neither arm
    does). Such a seed's value becomes NaN and its cell not testable, with the reason."""
    speed = f.claim.startswith("I3")
    for cell, vals in f.cells().items():
        why: dict[str, list[int]] = {}  # reason -> replicates (1-based, in seed order)
        for k, v in enumerate(vals, 1):
            if speed and v == 0:
                reason = f"the baseline never reached the target in {steps:,} steps at its rate"
            elif speed and math.isinf(v):
                reason = f"BN never reached the target in {steps:,} steps"
            elif speed and math.isnan(v):
                reason = f"neither arm reached the target in {steps:,} steps"
            elif math.isinf(v):
                reason = f"the baseline trains at no rate of the grid in {steps:,} steps (lr_max 0)"
            elif math.isnan(v):
                reason = "neither arm trains at any rate of the grid"
            else:
                continue
            why.setdefault(reason, []).append(k)
        if why:
            f.untestable[cell] = "no ratio exists: " + "; ".join(
                f"{reason} (replicate{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))} of {len(vals)})"
                for reason, ks in why.items())
            vals[:] = [math.nan if (speed and v == 0) or not math.isfinite(v) else v for v in vals]
    return f


def analyze(ctx: Context) -> list[Finding]:
    return [mark_untestable(f, ctx.cfg.trainer.steps)
            for f in analyze_sweep(ctx, "I4_lr_range", "I3_speed", "I3_speed_shared_lr")]
