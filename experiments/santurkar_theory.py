"""Santurkar et al. 2018 §4 and App. C checked numerically (T1-T5): Thm 4.1, Thm 4.2, Obs. 4.3, Thm 4.4 and
Lemma 4.5 at a single BN layer after one fully connected layer, gamma and beta held constant, in float64.

Notation as in the paper, per unit j over a batch of m examples: y_j the linear map's outputs, y_hat_j = (y_j -
mu_j) / sigma_j (batch statistics, no epsilon: the theorems have none), z_j = gamma_j y_hat_j + beta_j, L(z) the
loss of the layers above ("the identical non-BN network"), L_hat(y) = L(z(y)), g_j = grad_{z_j} L.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from bnlab import plots, runlog
from bnlab.analysis import done
from bnlab.claims import Context, Finding
from bnlab.data import load
from bnlab.models import Net, init_model
from bnlab.stepping import LOSSES

POINTS = ("init", "trained")


def standardise(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y_hat, mu, sigma per column: the batch statistics BN uses in training (biased variance, eps = 0)."""
    mu, sigma = y.mean(0), y.std(0, correction=0)
    return (y - mu) / sigma, mu, sigma


@dataclass
class BNLayer:
    """The paper's setting: y = x w^T, then BN with constant gamma, beta, then `top`, the loss of the layers above."""

    x: torch.Tensor  # (m, d)
    w: torch.Tensor  # (k, d)
    gamma: torch.Tensor  # (k,)
    beta: torch.Tensor  # (k,)
    top: Callable[[torch.Tensor], torch.Tensor]  # z (m, k) -> scalar loss

    def y(self) -> torch.Tensor:
        return self.x @ self.w.detach().T

    def bn(self, y: torch.Tensor) -> torch.Tensor:
        y_hat, _, _ = standardise(y)
        return self.gamma.detach() * y_hat + self.beta.detach()  # detached: constants, as the theorems hold them

    def loss_hat(self, y: torch.Tensor) -> torch.Tensor:
        return self.top(self.bn(y))


def grad(f: Callable, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_()
    return torch.autograd.grad(f(x), x)[0]


def block_quad_forms(f: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v_j^T (d^2 f / dx_j dx_j) v_j for each column j: exact Hessian-vector products (double backward) along v
    with every column but j zeroed, so each is the quadratic form of the unit's own (m x m) Hessian block."""
    x = x.detach().requires_grad_()
    g = torch.autograd.grad(f(x), x, create_graph=True)[0]
    forms = []
    for j in range(x.shape[1]):
        vj = torch.zeros_like(v)
        vj[:, j] = v[:, j]
        forms.append((torch.autograd.grad(g, x, vj, retain_graph=True)[0][:, j] * v[:, j]).sum())
    return torch.stack(forms).detach()


def thm_4_1(layer: BNLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per unit: ||grad_{y_j} L_hat||^2, the bound with App. C's 1/m on <g_j, y_hat_j>^2, and with the printed
    1/sqrt(m). As ||y_hat_j||^2 = m, dz/dy = (gamma/sigma) x a projection and the 1/m bound holds with equality."""
    y = layer.y()
    y_hat, _, sigma = standardise(y)
    m = len(y)
    v, g = grad(layer.loss_hat, y), grad(layer.top, layer.bn(y))
    scale = layer.gamma.detach() ** 2 / sigma**2
    base, along = (g**2).sum(0) - g.sum(0) ** 2 / m, (g * y_hat).sum(0) ** 2
    return (v**2).sum(0), scale * (base - along / m), scale * (base - along / math.sqrt(m))


def thm_4_2(layer: BNLayer) -> dict[str, torch.Tensor]:
    """Per unit, v = grad_{y_j} L_hat: lhs = v^T (d^2 L_hat/dy_j^2) v; rhs, the first form, (gamma/sigma)^2 v^T H v
    - gamma/(m sigma^2) <g, y_hat> ||v||^2 with H = d^2 L/dz_j^2; excess = (lhs - rhs) over the terms' magnitudes;
    the second form; and whether its assumption, read as v^T H v <= g^T H g, holds."""
    y = layer.y()
    y_hat, _, sigma = standardise(y)
    z, m, gamma = layer.bn(y), len(y), layer.gamma.detach()
    v, g = grad(layer.loss_hat, y), grad(layer.top, z)
    lhs = block_quad_forms(layer.loss_hat, y, v)
    v_h_v, g_h_g = block_quad_forms(layer.top, z, v), block_quad_forms(layer.top, z, g)
    g_y, v_v = (g * y_hat).sum(0), (v**2).sum(0)
    curvature, shift = gamma**2 / sigma**2 * v_h_v, gamma / (m * sigma**2) * g_y * v_v
    rhs = curvature - shift
    return {"lhs": lhs, "rhs": rhs, "excess": (lhs - rhs) / (lhs.abs() + curvature.abs() + shift.abs()),
            "second": gamma**2 / sigma**2 * (g_h_g - g_y * v_v / (m * gamma)), "assumption": v_h_v <= g_h_g}


def obs_4_3(y: torch.Tensor) -> float:
    """BN with gamma_j = sigma_j and beta_j = mu_j, the batch's own statistics: max |z - y| relative to max |y|."""
    y_hat, mu, sigma = standardise(y)
    return ((sigma * y_hat + mu - y).abs().max() / y.abs().max()).item()


def thm_4_4(layer: BNLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit: ||grad_{W_j} L_hat||^2, by autograd through the linear map, and the minimax bound g_hat_j with
    lambda = ||X||_2: max_{||X|| <= lambda} ||X^T u||^2 = lambda^2 ||u||^2 for u = grad_{y_j} L_hat held fixed."""
    lam2 = torch.linalg.matrix_norm(layer.x, ord=2) ** 2
    w = layer.w.detach().requires_grad_()
    grad_w = torch.autograd.grad(layer.loss_hat(layer.x @ w.T), w)[0]
    y = layer.y()
    y_hat, _, sigma = standardise(y)
    m, g = len(y), grad(layer.top, layer.bn(y))
    g_j = lam2 * (g**2).sum(0)
    bound = layer.gamma.detach() ** 2 / sigma**2 * (g_j - lam2 * m * g.mean(0) ** 2
                                                    - lam2 * (g * y_hat).sum(0) ** 2 / m)
    return (grad_w**2).sum(1), bound


def lemma_4_5(w0: torch.Tensor, w_star: torch.Tensor, loss_star: float, bn_loss: Callable[[torch.Tensor], float],
              match: float) -> dict[str, float]:
    """W_hat = c* W*, the point of the ray {c W*, c > 0} nearest W_0; lhs = ||W_0 - W_hat||^2, rhs the lemma's bound;
    `bn_loss(W_hat)` must equal the standard network's `loss_star` (relative `match`) for W_hat to be a BN optimum.
    value: lhs/rhs; inf if W_hat is not an optimum; NaN where <W_0, W*> <= 0 (the lemma says nothing)."""
    inner, sq = (w0 * w_star).sum().item(), (w_star**2).sum().item()
    w_hat = inner / sq * w_star
    lhs = ((w0 - w_hat) ** 2).sum().item()
    plain = ((w0 - w_star) ** 2).sum().item()
    rhs = plain - (sq - inner) ** 2 / sq
    miss = abs(bn_loss(w_hat) - loss_star) / abs(loss_star)
    value = math.nan if inner <= 0 else math.inf if not miss <= match else lhs / rhs
    return {"value": value, "lhs": lhs, "rhs": rhs, "plain": plain, "inner": inner, "miss": miss}


def top_of(net: Net, target: torch.Tensor, loss: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """L(z): the loss of the layers above the first block's normaliser (its nonlinearity and the head)."""
    block = net.blocks[0]
    return lambda z: loss(net.head(block.act(z)), target)


def nets(ctx: Context, run: pd.Series, data) -> dict[str, Net]:
    """The run's network at its own initialisation and at its final weights, in float64."""
    norm = OmegaConf.merge(ctx.cfg.norm, {"name": run["norm.name"]})
    build = lambda: init_model(ctx.cfg.model, norm, int(run.seed), data.shape, data.num_classes)  # noqa: E731
    trained = build()
    trained.load_state_dict(torch.load(Path(run.path) / runlog.MODEL))
    return {"init": build().double(), "trained": trained.double()}


def bn_checks(net: Net, x: torch.Tensor, target: torch.Tensor, loss: Callable) -> tuple[dict, pd.DataFrame]:
    """T1-T4 at one BN network: the per-seed values and the per-unit rows behind them."""
    bn = net.blocks[0].norm
    layer = BNLayer(x, net.blocks[0].linear.weight, bn.weight, bn.bias, top_of(net, target, loss))
    t1, t1_rhs, t1_printed = thm_4_1(layer)
    t2 = thm_4_2(layer)
    t4, t4_rhs = thm_4_4(layer)
    values = {"T1": (t1 / t1_rhs).max().item(), "T1_printed": (t1 / t1_printed.clamp(min=0)).max().item(),
              "T2": t2["excess"].max().item(), "T3": obs_4_3(layer.y()), "T4": (t4 / t4_rhs).max().item(),
              "T2_assumed": t2["assumption"].double().mean().item(),
              "T2_second_ok": (t2["lhs"] <= t2["second"])[t2["assumption"]].double().mean().item()}
    rows = pd.DataFrame({"T1 lhs": t1, "T1 rhs": t1_rhs, "T2 lhs": t2["lhs"], "T2 rhs": t2["rhs"],
                         "T4 lhs": t4, "T4 rhs": t4_rhs})
    return values, rows


def lemma_check(ctx: Context, run: pd.Series, data, x: torch.Tensor, target: torch.Tensor, loss: Callable) -> dict:
    """T5 from an unnormalised run: W_0 its first layer at initialisation, W* after training."""
    pair = nets(ctx, run, data)
    start, star = pair["init"].blocks[0].linear, pair["trained"].blocks[0].linear
    top = top_of(pair["trained"], target, loss)
    with torch.no_grad():
        y_star = star(x)
        _, mu, sigma = standardise(y_star)
        loss_star = top(y_star).item()
    bn_loss = lambda w: BNLayer(x, w, sigma, mu, top).loss_hat(x @ w.T).item()  # noqa: E731  # Obs 4.3 at W*
    return lemma_4_5(start.weight.detach(), star.weight.detach(), loss_star, bn_loss,
                     ctx.cfg.claims.T5_lemma_4_5.params.loss_match)


def lemma_untestable(lemma: pd.DataFrame) -> dict[str, str]:
    """T5's seeds where the lemma cannot be checked: <W_0, W*> <= 0 (NaN: it says nothing there) or W_hat is not a BN
    optimum (inf)."""
    if not len(lemma):
        return {"": "no unnormalised run to give W*"}
    why = []
    if lemma.value.isna().any():
        why.append(f"<W_0, W*> <= 0 in seeds {lemma.seed[lemma.value.isna()].tolist()}: the lemma does not apply")
    if np.isinf(lemma.value).any():
        missed = lemma.seed[np.isinf(lemma.value)].tolist()
        why.append(f"the BN network at W_hat misses the standard loss in seeds {missed}: W_hat is not an optimum")
    return {"": "; ".join(why)} if why else {}


def draw(per_unit: pd.DataFrame, lemma: pd.DataFrame):
    fig, ax = plots.subplots(4, width=3.2)
    for k, (name, title) in enumerate((("T1", "Thm 4.1: ||grad_y L_hat||^2"), ("T4", "Thm 4.4: ||grad_W L_hat||^2"))):
        for point, marker in zip(POINTS, "ox", strict=True):
            p = per_unit[per_unit.point == point]
            ax[0, k].scatter(p[f"{name} rhs"], p[f"{name} lhs"], s=8, marker=marker, label=point, alpha=0.7)
        ax[0, k].set(xscale="log", yscale="log", xlabel="bound (rhs)", ylabel="lhs", title=title)
    for point, marker in zip(POINTS, "ox", strict=True):
        p = per_unit[per_unit.point == point]
        ax[0, 2].scatter(p["T2 rhs"], p["T2 lhs"], s=8, marker=marker, label=point, alpha=0.7)
    ax[0, 2].set(xlabel="first-form bound (rhs)", ylabel="v^T Hess(L_hat) v",
                 title="Thm 4.2, per unit")
    ax[0, 3].scatter(lemma.plain, lemma.lhs, s=14, color=plots.COLORS["batch"], label="||W_0 - W_hat||^2")
    ax[0, 3].scatter(lemma.plain, lemma.rhs, s=30, marker="+", color="k", label="Lemma 4.5 bound")
    ax[0, 3].set(xlabel="||W_0 - W*||^2", ylabel="squared distance", title="Lemma 4.5, per seed")
    for a in ax[0]:
        lo, hi = a.get_xlim()
        a.plot([lo, hi], [lo, hi], color="k", lw=0.6, ls="--")
        a.legend(fontsize=7)
    return fig


def write_per_seed(ctx: Context, values: dict, seeds: list[int]) -> None:
    ctx.write_table("per_seed", pd.DataFrame(
        [{"seed": s, "point": p, **values[s, p]} for s in seeds for p in POINTS]),
        "Santurkar §4 checks per seed and point (T1, T4: largest lhs/rhs over units; T1_printed: with the printed "
        "1/sqrt(m), inf where the printed bound is negative (an empty cell in the CSV); T2: largest relative excess; "
        "T2_assumed: share of units where v^T H v <= g^T H g; T2_second_ok: share of those where the second form "
        "holds; T3: largest relative deviation)", infinite="bound negative")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    data = load(ctx.cfg.data)
    batch = int(ctx.cfg.claims.T1_thm_4_1.params.batch)
    idx = torch.randperm(len(data.train.x), generator=torch.Generator().manual_seed(0))[:batch]
    x, target = data.train.x[idx].flatten(1).double(), data.train.y[idx].double()
    loss = LOSSES[ctx.cfg.trainer.loss]
    values, units, lemma = {}, [], []
    for _, run in runs.sort_values("seed").iterrows():
        if run["norm.name"] == "batch":
            for point, net in nets(ctx, run, data).items():
                values[int(run.seed), point], rows = bn_checks(net, x, target, loss)
                units.append(rows.assign(seed=int(run.seed), point=point))
        else:
            lemma.append({"seed": int(run.seed), **lemma_check(ctx, run, data, x, target, loss)})
    per_unit, lemma = pd.concat(units) if units else pd.DataFrame(), pd.DataFrame(lemma)
    fig_path = plots.save(draw(per_unit, lemma), ctx.figure_path("checks"))
    seeds = sorted({s for s, _ in values})
    worst = {key: [max(values[s, p][key] for p in POINTS) for s in seeds] for key in ("T1", "T2", "T3", "T4")}
    summary = lambda key: ", ".join(f"{values[s, p][key]:.3g}" for s in seeds for p in POINTS)  # noqa: E731
    write_per_seed(ctx, values, seeds)
    closeness = lambda lhs, rhs: f"{np.median(per_unit[lhs] / per_unit[rhs]):.3g}"  # noqa: E731
    return [
        Finding("T1_thm_4_1", worst["T1"], f"largest lhs/rhs over units (init, trained per seed): {summary('T1')}; "
                f"median ratio {closeness('T1 lhs', 'T1 rhs')} (equality); with the printed 1/sqrt(m) the ratio "
                f"reaches {summary('T1_printed')} (inf: the printed bound is negative)", fig_path),
        Finding("T2_thm_4_2", worst["T2"], f"largest relative excess (lhs - rhs) over units: {summary('T2')} "
                f"(equality up to rounding); the second form's assumption held at a share {summary('T2_assumed')} "
                f"of units, and the second form at {summary('T2_second_ok')} of those", fig_path),
        Finding("T3_obs_4_3", worst["T3"], f"max |z - y| / max |y|: {summary('T3')}", fig_path),
        Finding("T4_thm_4_4", worst["T4"], f"largest actual/minimax ratio over units: {summary('T4')}; median "
                f"{closeness('T4 lhs', 'T4 rhs')} (the batch's own X is not the worst case)", fig_path),
        Finding("T5_lemma_4_5", lemma.value.tolist() if len(lemma) else [],
                "lhs/rhs per seed: " + plots.values(lemma.value) + "; the nearest BN optimum is at a share "
                + plots.values(lemma.lhs / lemma.plain) + " of ||W_0 - W*||^2; <W_0, W*>: " + plots.values(lemma.inner)
                + "; BN loss at W_hat vs standard at W*, relative: " + plots.values(lemma.miss)
                if len(lemma) else "no unnormalised run", fig_path, untestable=lemma_untestable(lemma)),
    ]
