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
from bnlab.probes import frozen, relative_loss, weight_grad_norms
from bnlab.stepping import LOSSES

ARMS = ("none", "batch")


def distances(params) -> list[float]:
    """B3's grid of step lengths d (a distance in parameter space), log-spaced."""
    lo, hi, per = math.log10(params.d_min), math.log10(params.d_max), int(params.per_decade)
    return np.logspace(lo, hi, round((hi - lo) * per) + 1).tolist()


def grad_norm(model, x: torch.Tensor, y: torch.Tensor, loss_fn) -> float:
    """Norm of the loss gradient over every parameter, in training mode on (x, y): the direction's length that
    relative_loss steps along."""
    with frozen(model):
        model.train()
        params = list(model.parameters())
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


def one_step_curves(ctx: Context, seeds: list[int], dists: list[float]) -> tuple[dict, dict, dict]:
    """Relative loss after one step of length d along the negative gradient at initialisation (eta = d / ||g||),
    per arm and seed, on one fixed batch; the weight gradients' norms, layer by layer; and the full gradient's
    norm."""
    d = ctx.cfg.data
    data = load(d)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train.x), generator=gen)[:int(ctx.cfg.claims.B3_one_step_blowup.params.batch)]
    x, y = data.train.x[idx], data.train.y[idx]
    loss_fn = LOSSES["cross_entropy"]
    curves, grad_norms, full = {}, {}, {}
    for arm in ARMS:
        for seed in seeds:
            norm = OmegaConf.merge(ctx.cfg.norm, {"name": arm})
            model = init_model(ctx.cfg.model, norm, seed, data.shape, data.num_classes)  # the run's own start
            full[arm, seed] = grad_norm(model, x, y, loss_fn)
            curves[arm, seed] = relative_loss(model, x, y, loss_fn, [dist / full[arm, seed] for dist in dists])
            grad_norms[arm, seed] = weight_grad_norms(model, x, y, loss_fn)
    return curves, grad_norms, full


def first_blowup(grid: list[float], ratios: list[float], level: float = 1.0) -> float:
    """The smallest step on the grid whose one-step loss ratio exceeds `level`; inf if none on the grid does."""
    hit = [step for step, r in zip(grid, ratios, strict=True) if not r <= level]  # NaN counts as a blow-up
    return hit[0] if hit else math.inf


def draw(ctx: Context, runs: pd.DataFrame, seeds: list[int], steps: dict, grad_norms: dict, dists: list[float]):
    """Two rows of two: accuracy against the learning rate; the one-step loss ratio against the step size; the
    activations' and the weight gradients' scale by depth at initialisation. One legend: every panel has the same
    two arms."""
    fig, ax = plots.subplots(2, 2, width=3.6)
    accuracy, one_step, activations, gradients = ax.flat
    for arm in ARMS:
        color, label = plots.COLORS[arm], plots.LABELS[arm]
        plots.errorbar(accuracy, runs[runs["norm.name"] == arm].assign(score=lambda d: score(d))
                       .groupby("optim.lr").score, color, label)
        first = select(runs, norm__name=arm).sort_values(["optim.lr", "seed"])
        if len(first):
            acts = runlog.activations(first.path.iloc[0])
            a = acts[acts.step == 0].sort_values("layer")
            activations.plot(a.layer + 1, a["std"], marker="o", ms=3, color=color, label=label)
        for seed in seeds:
            one_step.plot(dists, steps[arm, seed], color=color, alpha=0.7, label=label)
            norms = grad_norms[arm, seed]
            gradients.plot(range(1, len(norms) + 1), norms, marker="o", ms=3, color=color, alpha=0.7, label=label)
    accuracy.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy", ylim=(0, 1),
                 title=f"{ctx.cfg.model.depth}-layer ReLU MLP, {ctx.cfg.trainer.steps} steps")
    one_step.axhline(1, color="k", lw=0.6, ls="--")
    one_step.axhline(ctx.cfg.claims.B3_one_step_blowup.params.explosion, color="k", lw=0.6, ls=":")
    one_step.set(xscale="log", yscale="log", xlabel="step length d = eta |g|", ylabel="L(theta - d g/|g|) / L(theta)",
                 title="one step at initialisation")
    activations.set(yscale="log", xlabel="hidden layer", ylabel="std of pre-activations",
                    title="activation scale at initialisation")
    gradients.set(yscale="log", xlabel="weight layer (last: output)", ylabel="|dL/dW| (Frobenius)",
                  title="weight gradients at initialisation")
    plots.shared_legend(fig, [activations])  # plain lines, not the error bars, stand for the arms
    return fig


def write_tables(ctx: Context, runs: pd.DataFrame, seeds: list[int], grad_norms: dict) -> None:
    """Final accuracy by learning rate, and the weight gradients' norms at initialisation by layer."""
    table = runs.groupby(["norm.name", "optim.lr"]).final_test_acc.apply(list).reset_index()
    ctx.write_table("final_acc", table, "Deep ReLU MLP: final test accuracy by learning rate (diverged excluded)")
    layers = range(len(grad_norms[ARMS[0], seeds[0]]))
    ctx.write_table("grad_norm_init", pd.DataFrame(
        {"weight layer": [i + 1 for i in layers], "output layer": [i == len(layers) - 1 for i in layers],
         **{plots.LABELS[arm]: [list([grad_norms[arm, s][i] for s in seeds]) for i in layers]
            for arm in ARMS},
         "BN / none": [list([grad_norms["batch", s][i] / grad_norms["none", s][i] for s in seeds])
                       for i in layers]}),
        "Deep ReLU MLP at initialisation: norm of the loss gradient for each weight matrix, on the one-step batch "
        "(a reading aid for B3_one_step_blowup, not a claim)")


def one_step_finding(ctx: Context, seeds: list[int], dists: list[float], steps: dict, full: dict,
                     fig_path: str) -> Finding:
    """B3: the shortest step at initialisation that blows the loss up, BN / none, per seed."""
    b3 = ctx.cfg.claims.B3_one_step_blowup.params
    blowup = {arm: [first_blowup(dists, steps[arm, s], b3.explosion) for s in seeds] for arm in ARMS}
    unmeasured = {arm: [s for s, v in zip(seeds, blowup[arm], strict=True) if math.isinf(v)] for arm in ARMS}
    b3_values = [bn / plain if math.isfinite(bn) and math.isfinite(plain) else math.nan
                 for bn, plain in zip(blowup["batch"], blowup["none"], strict=True)]
    b3_untestable = {"": "; ".join(f"{plots.LABELS[arm]} never reaches a loss ratio of {b3.explosion:g} on the grid "
                                   f"(d <= {b3.d_max:g}) in seeds {unmeasured[arm]}" for arm in ARMS
                                   if unmeasured[arm])} if any(unmeasured.values()) else {}
    overshoot = [ratio(first_blowup(dists, steps["batch", s]), first_blowup(dists, steps["none", s])) for s in seeds]
    return Finding("B3_one_step_blowup", b3_values,
                   f"shortest step d = eta |g| whose loss ratio reaches {b3.explosion:g}, per seed: BN "
                   f"{plots.values(blowup['batch'])}, none {plots.values(blowup['none'])} (inf: never on the grid up "
                   f"to {b3.d_max:g}); |g| at initialisation: BN {plots.values([full['batch', s] for s in seeds])}, "
                   f"none {plots.values([full['none', s] for s in seeds])}; the first overshoot (ratio > 1), BN / "
                   "none: " + plots.values(overshoot), fig_path, untestable=b3_untestable)


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    seeds = sorted(int(s) for s in runs.seed.unique())
    claims = ctx.cfg.claims
    dists = distances(claims.B3_one_step_blowup.params)
    steps, grad_norms, full = one_step_curves(ctx, seeds, dists)
    fig_path = plots.save(draw(ctx, runs, seeds, steps, grad_norms, dists), ctx.figure_path("lr_onestep_depth"))
    write_tables(ctx, runs, seeds, grad_norms)
    per_arm = lambda arm, lr, s: final_score(select(runs, norm__name=arm, optim__lr=lr, seed=s).iloc[0])  # noqa: E731
    gap = lambda lr: [abs(100 * (per_arm("batch", lr, s) - per_arm("none", lr, s))) for s in seeds]  # noqa: E731
    small_lr, large_lr = float(claims.B1_small_lr_alike.params.lr), float(claims.B1_small_lr_alike.params.contrast_lr)

    best = best_lr(runs, "norm.name")
    own = [100 * (per_arm("batch", best["batch"], s) - per_arm("none", best["none"], s)) for s in seeds]
    b2_untestable = {} if best["batch"] > best["none"] else {
        "": f"BN's best rate ({best['batch']:g}) is not larger than no BN's ({best['none']:g}): the claim's mechanism, "
            "a larger usable rate, is absent (read as not reproduced)"}

    return [
        Finding("B1_small_lr_alike", gap(small_lr),
                f"|BN - none| final test accuracy at the fixed rate {small_lr:g}, points, per seed (1,500 steps: BN "
                f"{plots.values([100 * per_arm('batch', small_lr, s) for s in seeds])}, none "
                f"{plots.values([100 * per_arm('none', small_lr, s) for s in seeds])}); contrast: the same at "
                f"{large_lr:g}", fig_path, contrast=gap(large_lr)),
        Finding("B2_advantage_via_large_lr", own, f"BN (best lr {best['batch']:g}) minus none (best lr "
                f"{best['none']:g}), points", fig_path, untestable=b2_untestable),
        one_step_finding(ctx, seeds, dists, steps, full, fig_path),
    ]
