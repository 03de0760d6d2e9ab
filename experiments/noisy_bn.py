"""Santurkar et al. 2018 Fig. 2 and 8: noisy BN trains like BN although its distributions move more."""

import math

from bnlab import figures, plots
from bnlab.analysis import (
    curves,
    done,
    moment_change,
    paired_steps_ratio,
    per_seed_ratio,
    score_difference,
    scores_by_seed,
    select,
    steps_to,
)
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "noisy_batch", "noisy_none")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    target = ctx.cfg.claims.S2_noisy_matches_bn.params.target
    fig, ax = plots.subplots(len(lrs) + 1, width=3.2)
    figures.curves_by_lr(ax[0], runs, ARMS, lrs, "train_acc", (0, 1))
    for a in ax[0, :len(lrs)]:
        a.axhline(target, color="k", lw=0.6, ls="--")
    figures.moment_changes(ax[0, -1], select(runs, optim__lr=lrs[0]), ARMS, f"lr {lrs[0]:g}")
    fig_path = plots.save(fig, ctx.figure_path("training_moments"))
    table = runs.groupby(["norm.name", "optim.lr"]).final_test_acc.apply(list).reset_index()
    ctx.write_table("final_acc", table, "Noisy BN: final test accuracy (diverged runs excluded)")
    at = {f"lr {lr:g}": select(runs, optim__lr=lr) for lr in lrs}
    steps = lambda arm, ref: {cell: paired_steps_ratio(r, arm, ref, target, "train_acc")  # noqa: E731
                              for cell, r in at.items()}
    beats = steps("noisy_batch", "none")
    never = {cell: sorted(int(s) for s, c in curves(select(r, norm__name="none")).items()
                          if math.isinf(steps_to(c, target, "train_acc")))
             for cell, r in at.items()}
    beats_untestable = {cell: f"the standard network never reaches {target:.0%} training accuracy (or diverges) in "
                              f"seeds {seeds}: noisy BN / none is then 0 by construction, not a speed ratio"
                        for cell, seeds in never.items() if seeds}
    score_of = lambda arm: {cell: [100 * v for v in scores_by_seed(r, norm__name=arm).values()]  # noqa: E731
                            for cell, r in at.items()}
    hurt = {cell: score_difference(r, {"norm__name": "noisy_none"}, {"norm__name": "none"}) for cell, r in at.items()}
    return [
        Finding("S2_noisy_matches_bn", steps("noisy_batch", "batch"),
                f"steps to {target:.0%} training accuracy, noisy BN / BN, per seed; contrast: standard / BN",
                fig_path, contrast=steps("none", "batch")),
        Finding("S2_noisy_beats_standard", {cell: [math.nan if v == 0 else v for v in vs]
                                            for cell, vs in beats.items()},
                f"steps to {target:.0%} training accuracy, noisy BN / standard, per seed (NaN: the standard network "
                "never reached it)", fig_path, untestable=beats_untestable),
        Finding("S2_noise_hurts_standard", score_of("noisy_none"),
                "final test accuracy of the standard network with the noise, points (a diverged run scores chance); "
                "direction, noisy none minus none, points: " + "; ".join(
                    f"{cell} {plots.values(v)}" for cell, v in hurt.items()), fig_path),
        Finding("S2_less_stable", per_seed_ratio(at[f"lr {lrs[0]:g}"], "noisy_batch", "none", moment_change),
                "median per-step mean change, noisy BN / standard, per seed (median over hidden layers)", fig_path),
    ]
