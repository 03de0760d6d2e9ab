"""Bjorck et al. 2018 on depth: activations and gradients at initialisation by depth, and BN on the last layers
only, in a deep residual ReLU MLP."""

import math

import pandas as pd
import torch
from omegaconf import OmegaConf

from bnlab import plots
from bnlab.analysis import CHANCE, best_lr, curves, final_score, select
from bnlab.claims import Context, Finding
from bnlab.data import load
from bnlab.models import init_model
from bnlab.probes import depth_profile
from bnlab.stepping import LOSSES

ARMS = {"none": "no BN", "batch": "BN, every layer", "batch_last": "BN, last 5 layers"}
COLORS = {"none": plots.COLORS["none"], "batch": plots.COLORS["batch"], "batch_last": "#ff7f0e"}
NETS = ("residual", "plain")


def with_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """An `arm` column: BN on the last layers only (norm=batch_last) is its own arm beside none and batch."""
    partial = (runs["norm.name"] == "batch") & (runs["norm.last_layers"].astype(int) > 0)
    return runs.assign(arm=runs["norm.name"].where(~partial, "batch_last"))


def profiles(ctx: Context, seeds: list[int]) -> dict:
    """(net, arm, seed) -> depth_profile rows at the run's initialisation, on one fixed batch."""
    data = load(ctx.cfg.data)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train.x), generator=gen)[:int(ctx.cfg.claims.BJ_activations_grow.params.batch)]
    out = {}
    for net in NETS:
        model_cfg = OmegaConf.merge(ctx.cfg.model, {"residual": net == "residual"})
        for arm in ("none", "batch"):
            norm_cfg = OmegaConf.merge(ctx.cfg.norm, {"name": arm, "last_layers": 0})
            for seed in seeds:
                model = init_model(model_cfg, norm_cfg, seed, data.shape, data.num_classes)
                out[net, arm, seed] = depth_profile(model, data.train.x[idx], data.train.y[idx],
                                                    LOSSES[ctx.cfg.trainer.loss])
    return out


def growth(rows: list[dict], key: str) -> float:
    """Last hidden layer over first for activations ('std'); first over last for gradients ('grad_norm')."""
    return rows[-1][key] / rows[0][key] if key == "std" else rows[0][key] / rows[-1][key]


def recovered(runs: pd.DataFrame, best: dict) -> tuple[list[float], list[int]]:
    """Per seed: (last-5 - none) / (full - none), each arm at its own best rate; NaN where full BN gains nothing
    (the fraction is then not a measurement); and those seeds."""
    score = lambda arm, seed: final_score(select(runs, arm=arm, optim__lr=best[arm], seed=seed).iloc[0])  # noqa: E731
    out, no_gain = [], []
    for seed in sorted(set(select(runs, arm="none").seed)):
        none, full, last = (score(arm, seed) for arm in ("none", "batch", "batch_last"))
        out.append((last - none) / (full - none) if full > none else math.nan)
        if not full > none:
            no_gain.append(int(seed))
    return out, no_gain


def draw(ctx: Context, runs: pd.DataFrame, prof: dict, seeds: list[int], best: dict):
    fig, ax = plots.subplots(4, width=3.3)
    for arm in ("none", "batch"):
        for net, style in zip(NETS, ("-", ":"), strict=True):
            for seed in seeds:
                rows = prof[net, arm, seed]
                label = f"{ARMS[arm]}, {net}" if seed == seeds[0] else None
                ax[0, 0].plot([r["layer"] + 1 for r in rows], [r["std"] for r in rows], ls=style,
                              color=COLORS[arm], alpha=0.7, label=label)
                ax[0, 1].plot([r["layer"] + 1 for r in rows], [r["grad_norm"] for r in rows], ls=style,
                              color=COLORS[arm], alpha=0.7, label=label)
    ax[0, 0].set(yscale="log", xlabel="hidden layer", ylabel="std of the layer's output",
                 title="activations at initialisation")
    ax[0, 1].set(yscale="log", xlabel="hidden layer", ylabel="|dL/dh| over the batch",
                 title="gradients at initialisation")
    for arm, label in ARMS.items():
        r = runs[runs.arm == arm].assign(score=lambda d: [final_score(x) for _, x in d.iterrows()])
        plots.errorbar(ax[0, 2], r.groupby("optim.lr").score, COLORS[arm], label)
        cs = [c.dropna(subset=["test_acc"]) for c in curves(select(runs, arm=arm, optim__lr=best[arm])).values()]
        plots.band(ax[0, 3], cs, "step", "test_acc", COLORS[arm], f"{label}, lr {best[arm]:g}")
    ax[0, 2].axhline(CHANCE, color="k", lw=0.6, ls=":")
    ax[0, 2].set(xscale="log", xlabel="learning rate", ylabel="final test accuracy (diverged: chance)", ylim=(0, 1),
                 title=f"{ctx.cfg.model.depth}-layer residual ReLU MLP")
    ax[0, 3].set(xlabel="step", ylabel="test accuracy", ylim=(0, 1), title="each at its best rate")
    for a in ax[0, [0, 2, 3]]:  # the gradient panel has the activation panel's lines: one legend for both
        a.legend(fontsize=6)
    return fig


def analyze(ctx: Context) -> list[Finding]:
    runs = with_arms(ctx.runs[ctx.runs.status.isin(["finished", "diverged"])])
    seeds = sorted(int(s) for s in runs.seed.unique())
    prof = profiles(ctx, seeds)
    best = best_lr(runs, "arm")
    fig_path = plots.save(draw(ctx, runs, prof, seeds, best), ctx.figure_path("depth_last_layers"))
    ctx.write_table("final_acc", runs.assign(score=[final_score(r) for _, r in runs.iterrows()])
                    .groupby(["arm", "optim.lr"]).score.apply(list).reset_index(),
                    "Residual ReLU MLP: final test accuracy by learning rate (a diverged run at chance)")
    ratios = {key: {net: [growth(prof[net, "none", s], key) / growth(prof[net, "batch", s], key) for s in seeds]
                    for net in NETS} for key in ("std", "grad_norm")}
    detail = lambda key, what: (f"{what}, no BN / BN, per seed, residual MLP; control, not a test cell (He init "  # noqa: E731
        f"keeps a plain ReLU MLP's scale by design): plain MLP {plots.values(ratios[key]['plain'])}; no BN alone: "
        + "; ".join(f"{net} {plots.values([growth(prof[net, 'none', s], key) for s in seeds])}" for net in NETS)
        + "; BN alone: " + "; ".join(f"{net} {plots.values([growth(prof[net, 'batch', s], key) for s in seeds])}"
                                     for net in NETS))
    fraction, no_gain = recovered(runs, best)
    return [
        Finding("BJ_activations_grow", ratios["std"]["residual"],
                detail("std", "growth of the activations' std from the first hidden layer to the last"), fig_path),
        Finding("BJ_gradients_grow", ratios["grad_norm"]["residual"],
                detail("grad_norm", "growth of |dL/dh| from the last hidden layer to the first"), fig_path),
        Finding("BJ_last_layers_recover", fraction,
                "(last 5 - none) / (full - none), final test accuracy at each arm's best rate ("
                + ", ".join(f"{ARMS[a]} {best[a]:g}" for a in ARMS) + ")", fig_path,
                untestable={"": f"full BN does not beat no BN in seeds {no_gain}: no gain to recover"}
                if no_gain else {}),
    ]
