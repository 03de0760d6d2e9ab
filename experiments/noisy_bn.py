"""Santurkar et al. 2018 Fig. 2 and 8: noisy BN trains like BN although its distributions move more."""

from bnlab import figures, plots
from bnlab.analysis import done, moment_change, paired_steps_ratio, per_seed_ratio, score_difference, select
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
    return [
        Finding("S2_noisy_matches_bn", steps("noisy_batch", "batch"),
                f"steps to {target:.0%} training accuracy, noisy BN / BN, per seed", fig_path),
        Finding("S2_noisy_beats_standard", steps("noisy_batch", "none"),
                f"steps to {target:.0%} training accuracy, noisy BN / standard, per seed", fig_path),
        Finding("S2_noise_hurts_standard",
                {cell: score_difference(r, {"norm__name": "noisy_none"}, {"norm__name": "none"})
                 for cell, r in at.items()},
                "final test accuracy, noise without BN minus standard, points (a diverged run scores chance)",
                fig_path),
        Finding("S2_less_stable", per_seed_ratio(at[f"lr {lrs[0]:g}"], "noisy_batch", "none", moment_change),
                "median per-step mean change, noisy BN / standard, per seed (median over hidden layers)", fig_path),
    ]
