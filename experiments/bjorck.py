"""Bjorck et al. 2018: BN works through the larger learning rates it allows."""

import math

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from bnlab import plots, runlog
from bnlab.analysis import best_lr, done, final_score, ratio, score, select
from bnlab.claims import Context, Finding
from bnlab.data import load
from bnlab.models import init_model
from bnlab.probes import relative_loss, weight_grad_norms
from bnlab.stack import LOSSES

ARMS = ("none", "batch")
ETAS = np.logspace(-4, 1, 21).tolist()


def one_step_curves(ctx: Context, seeds: list[int]) -> tuple[dict, dict]:
    """Relative loss after one gradient step at initialisation, per arm and seed, on one fixed batch; and the
    weight gradients' norms, layer by layer, that the step is taken along."""
    d = ctx.cfg.data
    data = load(d)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train.x), generator=gen)[:int(ctx.cfg.claims.B3_one_step_blowup.params.batch)]
    x, y = data.train.x[idx], data.train.y[idx]
    curves, grad_norms = {}, {}
    for arm in ARMS:
        for seed in seeds:
            norm = OmegaConf.merge(ctx.cfg.norm, {"name": arm})
            model = init_model(ctx.cfg.model, norm, seed, data.shape, data.num_classes)  # the run's own start
            curves[arm, seed] = relative_loss(model, x, y, LOSSES["cross_entropy"], ETAS)
            grad_norms[arm, seed] = weight_grad_norms(model, x, y, LOSSES["cross_entropy"])
    return curves, grad_norms


def first_blowup(ratios: list[float], level: float = 1.0) -> float:
    """The smallest step size whose one-step loss ratio exceeds `level`; inf if none on the grid does."""
    hit = [eta for eta, r in zip(ETAS, ratios, strict=True) if not r <= level]  # NaN counts as a blow-up
    return hit[0] if hit else math.inf


def blowup_ratio(bn: float, plain: float) -> float:
    """BN's explosion step size over the plain network's. Where neither explodes on the grid the arms are alike
    (1), a failing replicate rather than an unmeasured one: the claim is that the plain network explodes."""
    return 1.0 if math.isinf(bn) and math.isinf(plain) else ratio(bn, plain)


def converged_lr(runs: pd.DataFrame, level: float) -> float:
    """The smallest learning rate at which every seed of every arm ends at `level` test accuracy or more."""
    worst = runs.assign(score=score(runs)).groupby("optim.lr").score.min()
    every_arm = runs.groupby("optim.lr")["norm.name"].nunique() == len(ARMS)
    ok = worst[(worst >= level) & every_arm]
    return float(ok.index.min()) if len(ok) else math.nan


def draw(ctx: Context, runs: pd.DataFrame, seeds: list[int], steps: dict, grad_norms: dict):
    """Accuracy against the learning rate; the one-step loss ratio against the step size; the activations' and
    the weight gradients' scale by depth at initialisation."""
    fig, ax = plots.subplots(4, width=3.3)
    for arm in ARMS:
        r = runs[runs["norm.name"] == arm].assign(score=lambda d: score(d))
        g = r.groupby("optim.lr").score
        plots.errorbar(ax[0, 0], g, plots.COLORS[arm], plots.LABELS[arm])
        for seed in seeds:
            ax[0, 1].plot(ETAS, steps[arm, seed], color=plots.COLORS[arm], alpha=0.7,
                          label=plots.LABELS[arm] if seed == seeds[0] else None)
        first = select(runs, norm__name=arm).sort_values(["optim.lr", "seed"])
        if len(first):
            acts = runlog.activations(first.path.iloc[0])
            a = acts[acts.step == 0].sort_values("layer")
            ax[0, 2].plot(a.layer + 1, a["std"], marker="o", ms=3, color=plots.COLORS[arm], label=plots.LABELS[arm])
        for seed in seeds:
            norms = grad_norms[arm, seed]
            ax[0, 3].plot(range(1, len(norms) + 1), norms, marker="o", ms=3, color=plots.COLORS[arm], alpha=0.7,
                          label=plots.LABELS[arm] if seed == seeds[0] else None)
    ax[0, 0].set(xscale="log", xlabel="learning rate", ylabel="final test accuracy", ylim=(0, 1),
                 title=f"{ctx.cfg.model.depth}-layer ReLU MLP, {ctx.cfg.trainer.steps} steps")
    ax[0, 1].axhline(1, color="k", lw=0.6, ls="--")
    ax[0, 1].axhline(ctx.cfg.claims.B3_one_step_blowup.params.explosion, color="k", lw=0.6, ls=":")
    ax[0, 1].set(xscale="log", yscale="log", xlabel="step size eta", ylabel="L(theta - eta g) / L(theta)",
                 title="one step at initialisation")
    ax[0, 2].set(yscale="log", xlabel="hidden layer", ylabel="std of pre-activations",
                 title="activation scale at initialisation")
    ax[0, 3].set(yscale="log", xlabel="weight layer (last: output)", ylabel="|dL/dW| (Frobenius)",
                 title="gradient at initialisation")
    for a in ax[0]:
        a.legend(fontsize=7)
    return fig


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    seeds = sorted(int(s) for s in runs.seed.unique())
    steps, grad_norms = one_step_curves(ctx, seeds)
    fig_path = plots.save(draw(ctx, runs, seeds, steps, grad_norms), ctx.figure_path("lr_onestep_depth"))
    table = runs.groupby(["norm.name", "optim.lr"]).final_test_acc.apply(list).reset_index()
    ctx.write_table("final_acc", table, "Deep ReLU MLP: final test accuracy by learning rate (diverged excluded)")
    layers = range(len(grad_norms[ARMS[0], seeds[0]]))
    ctx.write_table("grad_norm_init", pd.DataFrame(
        {"weight layer": [f"{i + 1}" if i < len(layers) - 1 else f"{i + 1} (output)" for i in layers],
         **{plots.LABELS[arm]: [list([grad_norms[arm, s][i] for s in seeds]) for i in layers]
            for arm in ARMS},
         "BN / none": [list([grad_norms["batch", s][i] / grad_norms["none", s][i] for s in seeds])
                       for i in layers]}),
        "Deep ReLU MLP at initialisation: norm of the loss gradient for each weight matrix, on the one-step batch "
        "(a reading aid for B3_one_step_blowup, not a claim)")

    explosion = ctx.cfg.claims.B3_one_step_blowup.params.explosion
    common = converged_lr(runs, ctx.cfg.claims.B1_small_lr_alike.params.converged)
    per_arm = lambda arm, lr, s: final_score(select(runs, norm__name=arm, optim__lr=lr, seed=s).iloc[0])  # noqa: E731
    small = [abs(100 * (per_arm("batch", common, s) - per_arm("none", common, s))) for s in seeds] \
        if math.isfinite(common) else []
    best = best_lr(runs, "norm.name")
    own = [100 * (per_arm("batch", best["batch"], s) - per_arm("none", best["none"], s)) for s in seeds] \
        if best["batch"] > best["none"] else [-math.inf] * len(seeds)
    blowup = {arm: [first_blowup(steps[arm, s], explosion) for s in seeds] for arm in ARMS}
    return [
        Finding("B1_small_lr_alike", small, f"|BN - none| at lr {common:g}, the smallest rate at which every seed of "
                "both arms converged, points" if small else "no rate of the grid at which both arms converged",
                fig_path),
        Finding("B2_advantage_via_large_lr", own, f"BN (best lr {best['batch']:g}) minus none (best lr "
                f"{best['none']:g}), points; -inf if BN's best rate is not larger", fig_path),
        Finding("B3_one_step_blowup", list(map(blowup_ratio, blowup["batch"], blowup["none"])),
                f"smallest eta whose loss ratio reaches {explosion:g}, per seed: BN {plots.values(blowup['batch'])}, "
                f"none {plots.values(blowup['none'])} (inf: never on the grid); the first overshoot (ratio > 1), "
                "BN / none: "
                + ", ".join(f"{first_blowup(steps['batch', s]) / first_blowup(steps['none', s]):.3g}" for s in seeds),
                fig_path),
    ]
