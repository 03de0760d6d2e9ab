"""Ioffe & Szegedy §4.2.1: BN-x30 against BN-x5, slower at first and better at the end."""

import math

from bnlab import plots
from bnlab.analysis import CHANCE, curves, done, score_difference, select, value_at
from bnlab.claims import Context, Finding

X5, X30, BASE = 0.5, 3.0, 0.1


def accuracy_at(runs, lr: float, step: int) -> dict[int, float]:
    """seed -> BN's test accuracy at `step` at this learning rate (chance where the run ended before it)."""
    out = {}
    for seed, c in curves(select(runs, norm__name="batch", optim__lr=lr)).items():
        acc = value_at(c, step)
        out[seed] = CHANCE if math.isnan(acc) else acc  # NaN: diverged before the step
    return out


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    early = int(ctx.cfg.claims.I3_x30_slower_initially.params.early_step)
    fig, ax = plots.subplots(2, width=3.4)
    for i, xlim in enumerate(((0, 2 * early), None)):  # the first steps, then the whole run
        for arm, lr, label in (("none", BASE, f"no BN, lr {BASE:g}"), ("batch", X5, f"BN-x5, lr {X5:g}"),
                               ("batch", X30, f"BN-x30, lr {X30:g}")):
            cs = list(curves(select(runs, norm__name=arm, optim__lr=lr)).values())
            style = "--" if lr == X30 else "-"
            plots.band(ax[0, i], cs, "step", "test_acc", plots.COLORS[arm], label, linestyle=style)
        ax[0, i].axvline(early, color="k", lw=0.6, ls=":")
        ax[0, i].set(title="3 x 100 sigmoid MLP, MNIST" + (", first steps" if i == 0 else ""), xlabel="step",
                     ylabel="test accuracy", ylim=(0.8, 1) if i else (0, 1), xlim=xlim)
        ax[0, i].legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    x5, x30 = accuracy_at(runs, X5, early), accuracy_at(runs, X30, early)
    slower = [100 * (x30[s] - x5[s]) for s in sorted(set(x5) & set(x30))]
    at = lambda lr: {"norm__name": "batch", "optim__lr": lr}  # noqa: E731
    catches = score_difference(runs, at(X30), at(X5))
    return [
        Finding("I3_x30_slower_initially", slower, f"BN-x30 minus BN-x5, test accuracy at step {early}, points, "
                "per seed", fig_path),
        Finding("I3_x30_catches_up", catches, "BN-x30 minus BN-x5, final test accuracy, points, per seed", fig_path),
    ]
