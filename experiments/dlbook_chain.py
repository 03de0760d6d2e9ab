"""Deep Learning Book §8.7.1: the one-unit-per-layer linear chain, with and without BN on its hidden units."""

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from bnlab import plots, runlog
from bnlab.claims import Context, Finding
from bnlab.data import load
from bnlab.models import init_model
from bnlab.probes import first_order_check

ARMS = ("none", "batch")


def init_checks(ctx: Context, depths: list[int], init_means: list[float], seeds: list[int]) -> pd.DataFrame:
    """The one-step first-order check at initialisation, for each depth, arm, init mean and seed."""
    d = ctx.cfg.data
    x = load(d).train.x
    rows = []
    for depth, arm, mean, seed in itertools.product(depths, ARMS, init_means, seeds):
        model_cfg = OmegaConf.merge(ctx.cfg.model, {"depth": depth, "init_mean": mean})
        norm_cfg = OmegaConf.merge(ctx.cfg.norm, {"name": arm})
        check = first_order_check(init_model(model_cfg, norm_cfg, seed, (d.dim,), d.dim), x)  # the run's start
        grads = check["weight_grad_norms"]
        # the share of the whole gradient that reaches the lower layers' weights w_1 .. w_{l-1}
        rows.append({"layers": depth + 1, "arm": arm, "init_mean": mean, "seed": seed, "ratio": check["ratio"],
                     "lower_grad_share": max(grads[:-1]) / check["grad_norm"]})
    return pd.DataFrame(rows)


def converged(run, fraction: float) -> bool:
    """Finished, with the last interval's training loss at most `fraction` of the loss at initialisation."""
    if run.status != "finished":
        return False
    m = runlog.metrics(run.path)
    return bool(m.train_loss.dropna().iloc[-1] <= fraction * m.test_loss.iloc[0])


def lr_max_by_depth(runs: pd.DataFrame, arm: str) -> dict[int, float]:
    """Layers -> the largest converging learning rate (NaN: none converged)."""
    r = runs[runs["norm.name"] == arm]
    return {int(d) + 1: float(g[g.converged]["optim.lr"].max()) for d, g in r.groupby("model.depth")}


def draw(ctx: Context, checks: pd.DataFrame, lr_max: dict, depths: list[int], seeds: list[int],
         exploding: float) -> Path:
    """The first-order check, the largest converging rate and the lower layers' gradient share, by depth."""
    fig, ax = plots.subplots(3, width=3.2)
    for arm in ARMS:
        for mean, style in ((ctx.cfg.model.init_mean, "-"), (exploding, "--")):
            c = checks[(checks.arm == arm) & (checks.init_mean == mean)].groupby("layers").ratio
            ax[0, 0].plot(list(c.groups), [float(np.median(abs(v - 1))) for _, v in c], style, marker="o", ms=3,
                          color=plots.COLORS[arm], label=f"{plots.LABELS[arm]}, w ~ N({mean:g}, 0.1²)")
        for s in seeds:
            lm = lr_max[arm, s]
            ax[0, 1].plot(list(lm), list(lm.values()), marker="o", color=plots.COLORS[arm], alpha=0.7,
                          label=plots.LABELS[arm] if s == seeds[0] else None)
    c = checks[checks.arm == "batch"]
    ax[0, 2].plot(c.layers, c.lower_grad_share, "o", color=plots.COLORS["batch"])
    ax[0, 0].set(xscale="log", yscale="log", xlabel="layers l", ylabel="|actual / first-order - 1| (median)",
                 title="one step at initialisation")
    ax[0, 1].set(xscale="log", yscale="log", xlabel="layers l", ylabel="largest converging lr",
                 title=f"{ctx.cfg.trainer.steps} steps, each seed")
    ax[0, 2].set(xscale="log", yscale="log", xlabel="layers l", ylabel="lower-layer gradient / whole gradient",
                 title="BN: gradient of the lower layers")
    for a in ax[0]:
        a.set_xticks([d + 1 for d in depths], [str(d + 1) for d in depths])
        a.minorticks_off()
    for a in ax[0, :2]:
        a.legend(fontsize=7)
    return plots.save(fig, ctx.figure_path("chain"))


def write_tables(ctx: Context, checks: pd.DataFrame, lr_max: dict, seeds: list[int], fraction: float) -> None:
    """The first-order checks per seed, and the largest converging rate by depth, per arm and seed."""
    ctx.write_table("init_check", checks, "First-order check at initialisation, per seed")
    table = [{"arm": arm, "seed": s, **{f"l = {k}": v for k, v in lr_max[arm, s].items()}}
             for arm in ARMS for s in seeds]
    ctx.write_table("lr_max", pd.DataFrame(table),
                    f"Largest converging learning rate (finished, final training loss at most {fraction:g} x the "
                    "loss at initialisation) by depth")


def findings(checks: pd.DataFrame, lr_max: dict, seeds: list[int], exploding: float, fig_path: Path) -> list[Finding]:
    """One finding per claim, from the checks at initialisation and the largest converging rates."""
    bn, plain = checks[checks.arm == "batch"], checks[checks.arm == "none"]
    deep_plain = plain[(plain.layers >= 16) & np.isclose(plain.init_mean, exploding)]
    span = lambda lm: [lm[min(lm)] / lm[max(lm)]] if lm and lm[max(lm)] == lm[max(lm)] else [math.nan]  # noqa: E731
    spread = lambda lm: max(lm.values()) / min(lm.values()) if all(v == v for v in lm.values()) else math.nan  # noqa: E731
    return [
        Finding("DLB_bn_first_order", list((bn.ratio - 1).abs().groupby(bn.seed).max()),
                "largest |ratio - 1| with BN over depths and inits, per seed", fig_path),
        Finding("DLB_plain_higher_order", {f"l = {layers}": list((g.ratio - 1).abs())
                                           for layers, g in deep_plain.groupby("layers")},
                "|ratio - 1| without BN, N(1.1) init, per seed", fig_path),
        Finding("DLB_bn_lower_layers_idle", list(bn.lower_grad_share.groupby(bn.seed).max()),
                "largest share over depths and inits, per seed", fig_path),
        Finding("DLB_lr_depth_plain", [v for s in seeds for v in span(lr_max["none", s])],
                "lr_max(4) / lr_max(32) without BN, per seed", fig_path),
        Finding("DLB_lr_depth_bn", [spread(lr_max["batch", s]) for s in seeds],
                "max / min of lr_max over depths with BN, per seed", fig_path),
    ]


def analyze(ctx: Context) -> list[Finding]:
    runs = ctx.runs
    depths = sorted(int(d) for d in runs["model.depth"].unique())
    seeds = sorted(int(s) for s in runs.seed.unique())
    exploding = ctx.cfg.claims.DLB_bn_first_order.params.exploding_init_mean
    checks = init_checks(ctx, depths, [ctx.cfg.model.init_mean, exploding], seeds)
    fraction = ctx.cfg.claims.DLB_lr_depth_plain.params.converged
    runs = runs.assign(converged=[converged(r, fraction) for _, r in runs.iterrows()])
    lr_max = {(arm, s): lr_max_by_depth(runs[runs.seed == s], arm) for arm in ARMS for s in seeds}

    fig_path = draw(ctx, checks, lr_max, depths, seeds, exploding)
    write_tables(ctx, checks, lr_max, seeds, fraction)
    return findings(checks, lr_max, seeds, exploding, fig_path)
