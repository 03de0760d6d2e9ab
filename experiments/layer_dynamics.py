"""The write-up's question (does BN's distribution stop moving although gamma and beta move it?) and Ioffe §3.3's
conjecture (BN keeps layer Jacobians' singular values near 1), on the Fig. 1 MLP."""

import math

import numpy as np
import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import by_seed, paired, select
from bnlab.claims import Context, Finding

ARMS = {"none": "no BN", "batch": "BN, gamma and beta learned", "batch_fixed": "BN, gamma = 1 and beta = 0"}
COLORS = {"none": plots.COLORS["none"], "batch": plots.COLORS["batch"], "batch_fixed": "#9ecae1"}


def with_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """An `arm` column: BN without its affine step (norm=batch_fixed) is its own arm beside none and batch."""
    fixed = (runs["norm.name"] == "batch") & ~runs["norm.affine"].astype(bool)
    return runs.assign(arm=runs["norm.name"].where(~fixed, "batch_fixed"))


def unit_shift(acts: pd.DataFrame) -> pd.Series:
    """Per probe interval (indexed by its last step): |change of mean| + |change of std| of each tracked unit
    between consecutive probes of the same batch, averaged over the units and hidden layers."""
    units = sorted({c.split("_")[0] for c in acts.columns if c.startswith("u") and c.endswith("_mean")})
    moments = acts.set_index(["layer", "step"]).sort_index()[[f"{u}_{m}" for u in units for m in ("mean", "std")]]
    change = moments.groupby(level="layer").diff().abs().dropna(how="all")
    return change.mean(axis=1).groupby(level="step").mean()


def mean_shift(run) -> float:
    """The run's shift averaged over its intervals; a diverged run's inputs moved without bound (inf)."""
    return float(unit_shift(runlog.activations(run.path)).mean()) if run.status == "finished" else math.inf


def jacobian_distance(run, step: int | None) -> float:
    """max over layer pairs of |log2 typical singular value| at `step` (None: the end of training); inf for a run
    that diverged before it."""
    acts = runlog.activations(run.path)
    if step is None and run.status != "finished":
        return math.inf
    at = acts[acts.step == (acts.step.max() if step is None else step)].dropna(subset=["jac_sv_median"])
    return float(np.abs(np.log2(at.jac_sv_median)).max()) if len(at) else math.inf


def spread(runs: pd.DataFrame, arm: str, lr: float, step: int | None) -> str:
    """The median over seeds and layer pairs of the smallest and largest singular values, for the detail text."""
    rows = []
    for _, r in select(runs, arm=arm, optim__lr=lr).iterrows():
        acts = runlog.activations(r.path).dropna(subset=["jac_sv_median"])
        rows.append(acts[acts.step == (acts.step.max() if step is None else step)])
    at = pd.concat(rows) if rows else pd.DataFrame(columns=["jac_sv_min", "jac_sv_max"])
    return f"{at.jac_sv_min.median():.2g} to {at.jac_sv_max.median():.2g}"


def draw(ctx: Context, runs: pd.DataFrame, lrs: list[float]):
    """Per learning rate: the shift over training (top) and each arm's typical singular value by step (bottom),
    against the dotted line at 1 that Ioffe's conjecture expects."""
    fig, ax = plots.subplots(len(lrs), nrows=2, width=3.3)
    for col, lr in enumerate(lrs):
        for arm, label in ARMS.items():
            rs = select(runs, arm=arm, optim__lr=lr)
            acts = [runlog.activations(p) for p in rs.path]
            shift = [unit_shift(a).rename("shift").reset_index() for a in acts]
            plots.band(ax[0, col], [s for s in shift if len(s)], "step", "shift", COLORS[arm], label)
            jac = [a.dropna(subset=["jac_sv_median"]).groupby("step").jac_sv_median.median().reset_index()
                   for a in acts if "jac_sv_median" in a]
            plots.band(ax[1, col], [j for j in jac if len(j)], "step", "jac_sv_median", COLORS[arm], label)
        ax[0, col].set(title=f"3 x 100 sigmoid MLP, lr {lr:g}", xlabel="step", yscale="log",
                       ylabel=f"|d mean| + |d std| per {ctx.cfg.trainer.probe_every} steps")
        ax[1, col].axhline(1, color="k", lw=0.6, ls=":")
        ax[1, col].set(xlabel="step", yscale="log", ylabel="typical singular value of d x_l / d x_(l-1)")
    plots.shared_legend(fig)  # every panel has the same arms; below the panels, no legend meets the line at 1
    return fig


def analyze(ctx: Context) -> list[Finding]:
    runs = with_arms(ctx.runs[ctx.runs.status.isin(["finished", "diverged"])])
    lrs = sorted(runs["optim.lr"].unique())
    fig_path = plots.save(draw(ctx, runs, lrs), ctx.figure_path("shift_jacobian"))
    shift = {(arm, lr): by_seed(runs, mean_shift, arm=arm, optim__lr=lr) for arm in ARMS for lr in lrs}
    ctx.write_table("shift", pd.DataFrame(
        [{"arm": ARMS[arm], "optim.lr": lr, "mean shift per probe interval": list(shift[arm, lr].values())}
         for arm in ARMS for lr in lrs]),
        f"Mean change per {ctx.cfg.trainer.probe_every} steps of a unit's mean and std on the probe batch")
    start = {arm: by_seed(runs, lambda r: jacobian_distance(r, 0), arm=arm, optim__lr=lrs[0])
             for arm in ("none", "batch")}
    end = {(arm, lr): by_seed(runs, lambda r: jacobian_distance(r, None), arm=arm, optim__lr=lr)
           for arm in ("none", "batch") for lr in lrs}
    cells = lambda f: {"initialisation": f(start["batch"], start["none"]),  # noqa: E731  (every rate starts alike)
                       **{f"end, lr {lr:g}": f(end["batch", lr], end["none", lr]) for lr in lrs}}
    return [
        Finding("SH_bn_moves_less", {f"lr {lr:g}": paired(shift["batch", lr], shift["none", lr]) for lr in lrs},
                "mean change per probe interval of a unit's mean and std on the probe batch, BN (gamma, beta "
                "learned) / no BN, per seed; with BN a unit's mean and std on the batch it normalises are its beta "
                "and |gamma|, so BN's shift is how far they move", fig_path),
        Finding("SH_fixed_affine_still", {f"lr {lr:g}": list(shift["batch_fixed", lr].values()) for lr in lrs},
                "mean change per probe interval of a unit's mean and std on the probe batch, BN with gamma = 1, "
                "beta = 0", fig_path),
        Finding("JS_near_one", cells(lambda bn, none: [bn[s] for s in sorted(bn)]),
                "BN: the larger |log2 typical singular value| of the two layer pairs, per seed. The typical (median) "
                "value stands in for Ioffe's 'all singular values', which spread, with BN, from "
                f"{spread(runs, 'batch', lrs[0], 0)} at initialisation and "
                + ", ".join(f"{spread(runs, 'batch', lr, None)} at the end at lr {lr:g}" for lr in lrs)
                + " (medians of the smallest and the largest); J includes this layer's gamma, not the one below's",
                fig_path),
        Finding("JS_closer_with_bn", cells(paired),
                "the larger |log2 typical singular value| of the two layer pairs, BN / no BN, per seed", fig_path),
    ]
