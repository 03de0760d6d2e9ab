"""The write-up's penalty instead of normalisation: the Fig. 1 MLP on loss + lambda x a moment penalty."""

import math

import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import best_lr, curves, done, paired_steps_ratio, select
from bnlab.claims import Context, Finding

PENALISED = (0.1, 1.0)


def off_standard(run) -> float:
    """Sum over hidden layers of |mean| + |std - 1| of the nonlinearity inputs on the probe batch at the end of
    training; a run that diverged never got there and has kept nothing standardised (infinite)."""
    if run.status != "finished":
        return math.inf
    acts = runlog.activations(run.path)
    if not len(acts):
        return math.nan
    last = acts[acts.step == acts.step.max()]
    return float((last["mean"].abs() + (last["std"] - 1).abs()).sum())


def arm(runs: pd.DataFrame, norm: str, lam: float) -> pd.DataFrame:
    return select(runs, norm__name=norm, trainer__moment_penalty=lam)


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    target = ctx.cfg.claims.MP_trains_like_bn.params.target
    arms = [("batch", 0.0, "BN"), ("none", 0.0, "no BN")] + [("none", lam, f"no BN, penalty {lam:g}")
                                                               for lam in PENALISED]
    fig, ax = plots.subplots(len(lrs), width=3.3)
    for a, lr in zip(ax[0], lrs, strict=False):
        for i, (norm, lam, label) in enumerate(arms):
            cs = list(curves(select(arm(runs, norm, lam), optim__lr=lr)).values())
            plots.band(a, cs, "step", "test_acc", plots.COLORS[norm], label, linestyle=("-", "-", "--", ":")[i])
        a.axhline(target, color="k", lw=0.6, ls=":")
        a.set(title=f"3 x 100 sigmoid MLP, MNIST, lr {lr:g}", xlabel="step", ylabel="test accuracy", ylim=(0.8, 1))
        a.legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    table = runs.groupby(["norm.name", "trainer.moment_penalty", "optim.lr"]).agg(
        final_acc=("final_test_acc", list), steps_per_s=("steps_per_s", "median")).reset_index()
    ctx.write_table("final_acc", table, "Moment penalty: final test accuracy (diverged excluded) and training "
                    "steps/s (penalised runs train alone, the others in stacks: not a like-for-like speed)")
    standardises = {}
    for lr in lrs:
        plain, penalised = ({int(r.seed): off_standard(r) for _, r in select(arm(runs, "none", lam),
                                                                             optim__lr=lr).iterrows()}
                            for lam in (0.0, max(PENALISED)))
        standardises[f"lr {lr:g}"] = [penalised[s] / plain[s] for s in sorted(set(plain) & set(penalised))]
    bn = arm(runs, "batch", 0.0)
    bn_lr = best_lr(bn, "norm.name")["batch"]
    like_bn = {}
    for lam in PENALISED:
        mine = arm(runs, "none", lam)  # norm names tell the two arms apart once this lambda is selected
        like_bn[f"lambda {lam:g}"] = paired_steps_ratio(
            pd.concat([mine, bn]), "none", "batch", target, arm_lr=best_lr(mine, "norm.name")["none"],
            reference_lr=bn_lr) if len(mine) else []
    return [
        Finding("MP_standardises", standardises, f"off-standard inputs, lambda {max(PENALISED):g} / no penalty, "
                "per seed", fig_path),
        Finding("MP_trains_like_bn", like_bn, f"steps to {target:.0%} test accuracy, penalised / BN, each at its "
                "best learning rate, per seed", fig_path),
    ]
