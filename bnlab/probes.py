"""Measurements taken on a model without changing it.

`frozen(model)` restores every buffer (BN running statistics and counters) and the RNG afterwards, so a
probe in training mode sees batch statistics exactly as a training step would, yet the run continues
bitwise as if the probe never happened.
"""

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models import Block, Net, chosen_layer, layer_parameters

PERCENTILES = (15.0, 50.0, 85.0)  # Ioffe Fig. 1(b,c)


def rng_state() -> tuple:
    """The global RNGs a training step draws from: the CPU's, and CUDA's once CUDA is in use (dropout on a GPU)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def frozen(model: Net):
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = rng_state()
    was_training = model.training
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        set_rng_state(rng)
        model.train(was_training)


def layer_values(model: Net, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per hidden block on batch x, in training mode (batch statistics), each as units x values: `u`, the block's
    input; `wu`, its linear map's output Wu + b; `x`, the input of its nonlinearity (Wu + b normalised).

    For a conv layer a unit is a channel and its values run over batch and positions (Ioffe §3.2).
    """
    captured: list[dict[str, torch.Tensor]] = []

    def linear_hook(module, inputs, out):
        captured.append({"u": inputs[0].detach(), "wu": out.detach()})

    hooks = [h for b in cast("Iterable[Block]", model.blocks) for h in (
        b.linear.register_forward_hook(linear_hook),
        b.norm.register_forward_hook(lambda m, i, out: captured[-1].update(x=out.detach())))]
    try:
        with frozen(model), torch.no_grad():
            model.train()
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [{k: a.transpose(0, 1).reshape(a.shape[1], -1) for k, a in c.items()} for c in captured]


def per_unit_scale(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The slope of each unit's normaliser over the batch (units x values in, units out): cov(after, before) /
    var(before). It is the normaliser's derivative for one that maps each unit by an affine function over the
    batch (none, BN with its batch statistics held, lp, batch renorm), the map of one example's input to its output."""
    b = before - before.mean(1, keepdim=True)
    return (b * (after - after.mean(1, keepdim=True))).sum(1) / b.pow(2).sum(1)


def jacobian_spectra(model: Net, x: torch.Tensor, examples: int) -> list[dict]:
    """Ioffe §3.3's conjecture, that BN keeps layer Jacobians' singular values near 1: for each hidden layer l >= 1
    of an MLP and each of the first `examples` examples of x, the singular values of d x_l / d x_{l-1}, where x_l
    is layer l's nonlinearity input (its normaliser's output), with the batch statistics of x held (training
    mode, as a step sees them): J = diag(scale_l) W_l diag(act'(x_{l-1})). Per layer, the median over examples of
    each example's median, largest and smallest singular value (dropout off: the deterministic map)."""
    values = layer_values(model, x)
    median = lambda t: torch.quantile(t, 0.5, dim=-1)  # noqa: E731  (torch.median takes the lower middle)
    rows = []
    for layer in range(1, len(values)):
        before = values[layer - 1]["x"][:, :examples].T.clone().requires_grad_(True)  # examples x units
        act = cast(Block, model.blocks[layer - 1]).act
        (slope,) = torch.autograd.grad(act(before).sum(), before)  # elementwise nonlinearities: the diagonal
        scale = per_unit_scale(values[layer]["wu"], values[layer]["x"])
        weight = cast(torch.Tensor, cast(Block, model.blocks[layer]).linear.weight).detach()
        jac = (scale[:, None] * weight).unsqueeze(0) * slope.unsqueeze(1)  # examples x out x in
        sv = torch.linalg.svdvals(jac)  # examples x min(out, in), descending
        rows.append({"layer": layer, "jac_sv_median": median(median(sv)).item(),
                     "jac_sv_max": median(sv[:, 0]).item(), "jac_sv_min": median(sv[:, -1]).item()})
    return rows


def skew_and_excess_kurtosis(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit (row) over its values; NaN for a constant unit (a pixel that is always 0)."""
    centred = a - a.mean(1, keepdim=True)
    var = centred.pow(2).mean(1)
    return centred.pow(3).mean(1) / var.pow(1.5), centred.pow(4).mean(1) / var.pow(2) - 3


def activation_stats(model: Net, x: torch.Tensor, units: int, bins: int, hist_range: float) -> list[dict]:
    """Per hidden layer: percentiles of the whole layer and of units 0..units-1, moments, and a histogram."""
    median = lambda t: torch.nanquantile(t, 0.5).item()  # noqa: E731  (nanmedian takes the lower middle)
    rows = []
    for layer, values in enumerate(layer_values(model, x)):
        a = values["x"]
        q = torch.tensor(PERCENTILES, device=a.device) / 100.0
        flat = a.flatten()
        per_unit = torch.quantile(a[:units], q, dim=1).T  # units x 3
        mean, std = flat.mean(), flat.std()
        # shape per unit (over the batch), then the median over units: is each unit's input Gaussian?
        skew, kurt = skew_and_excess_kurtosis(a)
        jarque_bera = a.shape[1] / 6 * (skew.pow(2) + kurt.pow(2) / 4)  # ~ chi2(2) under normality
        row: dict[str, Any] = {
            "layer": layer, "mean": mean.item(), "std": std.item(), "skew": median(skew),
            "excess_kurtosis": median(kurt), "jarque_bera": median(jarque_bera),
            # Ioffe §3.2: is Wu + b more Gaussian than the layer's input u? median over units of |kurtosis|
            "abs_kurtosis": median(kurt.abs()),
            **{f"abs_kurtosis_{k}": median(skew_and_excess_kurtosis(values[k])[1].abs()) for k in ("wu", "u")}}
        row.update({f"p{int(p)}": v for p, v in zip(PERCENTILES, torch.quantile(flat, q).tolist(), strict=True)})
        unit_mean, unit_std = a[:units].mean(1).tolist(), a[:units].std(1).tolist()
        for u in range(per_unit.shape[0]):
            row.update({f"u{u}_p{int(p)}": v for p, v in zip(PERCENTILES, per_unit[u].tolist(), strict=True)})
            row.update({f"u{u}_mean": unit_mean[u], f"u{u}_std": unit_std[u]})
        row["hist"] = torch.histc(flat, bins=bins, min=-hist_range, max=hist_range).int().tolist()
        row["below"] = int((flat < -hist_range).sum())
        row["above"] = int((flat > hist_range).sum())
        rows.append(row)
    return rows




def _grads(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn, params: Sequence[torch.Tensor], rng: tuple):
    """Loss and gradients on (x, y) with the RNG reset first, so a noisy normaliser draws the same noise."""
    set_rng_state(rng)
    loss = loss_fn(model(x), y)
    return loss.item(), torch.autograd.grad(loss, params)


def _all_grads(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple:
    """(the RNG to replay, every parameter, the loss, its gradient) at the model's current weights."""
    rng, params = rng_state(), list(model.parameters())
    return (rng, params, *_grads(model, x, y, loss_fn, params, rng))


def _weights(model: Net) -> list[torch.Tensor]:
    """Every linear map's weight, input to output: the hidden layers', then the head's."""
    return ([cast(torch.Tensor, b.linear.weight) for b in cast("Iterable[Block]", model.blocks)]
            + [cast(torch.Tensor, model.head.weight)])


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _assign(params: Sequence[torch.Tensor], values) -> None:
    """Overwrite parameters in place (outside autograd): probes move the model, then put it back."""
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def internal_covariate_shift(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn, lr: float,
                             layers: list[int], block: str = "all", step: int = 0) -> list[dict]:
    """Santurkar et al. Def. 2.1: G = grad of layer i's weight; G' = the same after every layer below i has
    taken its own gradient step (on the same batch, same noise draw). Returns l2 distance and cosine.

    Under block-coordinate SGD (block, at the run's step `step`) the layers below move as the run's own update
    moves them: only the one chosen layer (`models.chosen_layer` on this very gradient), so where the chosen layer
    is not below i nothing below moves and G' = G; the rows then also name the chosen layer."""
    rows = []
    with frozen(model):
        model.train()
        rng, params, _, grads = _all_grads(model, x, y, loss_fn)
        grad_of = dict(zip(map(id, params), grads, strict=True))
        chosen = None if block == "all" else chosen_layer(block, step, [[grad_of[id(p)] for p in ps]
                                                                         for ps in layer_parameters(model)])
        for i in layers:
            weight = cast(torch.Tensor, cast(Block, model.blocks[i]).linear.weight)
            moving: Iterable[nn.Module] = (model.blocks[:i] if chosen is None
                                           else model.blocks[chosen:chosen + 1] if chosen < i else [])
            below = [p for b in moving for p in b.parameters()]
            g = grad_of[id(weight)]
            if below:
                saved = [p.detach().clone() for p in below]
                _assign(below, [s - lr * grad_of[id(p)] for p, s in zip(below, saved, strict=True)])
                _, (g_after,) = _grads(model, x, y, loss_fn, [weight], rng)
                _assign(below, saved)
            else:  # nothing below moves: the gradient is the one already taken
                g_after = g
            row = {"kind": "ics", "layer": i, "l2": (g - g_after).norm().item(),
                   "cos": F.cosine_similarity(g.flatten(), g_after.flatten(), dim=0).item()}
            rows.append(row if chosen is None else {**row, "chosen": chosen})
    return rows


def landscape(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn, lr: float, multipliers: list[float],
              seed: int) -> list[dict]:
    """Santurkar et al. §3.1 / Fig. 4: move c * lr along the gradient (and, as the control of S7, along a
    random direction of the same norm) and record the loss range, the largest gradient change (gradient
    predictiveness) and the largest ||grad change|| / ||step|| (effective beta-smoothness)."""
    rows = []
    with frozen(model):
        model.train()
        rng, params, loss0, g = _all_grads(model, x, y, loss_fn)
        g_flat = _flat(g)
        gen = torch.Generator().manual_seed(seed)
        rand = [torch.randn(p.shape, generator=gen).to(p.device) for p in params]  # the same on every device
        scale = g_flat.norm() / _flat(rand).norm()
        saved = [p.detach().clone() for p in params]
        for name, direction in (("gradient", g), ("random", [r * scale for r in rand])):
            losses, changes, betas = [loss0], [], []
            for c in multipliers:
                _assign(params, [s - c * lr * d for s, d in zip(saved, direction, strict=True)])
                loss_c, g_c = _grads(model, x, y, loss_fn, params, rng)
                change = (_flat(g_c) - g_flat).norm().item()
                losses.append(loss_c)
                changes.append(change)
                betas.append(change / (c * lr * g_flat.norm().item() + 1e-30))
            rows.append({"kind": "landscape", "direction": name, "loss": loss0, "loss_min": min(losses),
                         "loss_max": max(losses), "range": max(losses) - min(losses), "grad_change": max(changes),
                         "beta": max(betas)})
        _assign(params, saved)
    return rows


class MomentTracker:
    """Santurkar et al. Fig. 8: per training step, |mu_{t+1} - mu_t| and |var_{t+1} - var_t| of the batch
    moments of units 0..k-1 of every hidden layer's nonlinearity input. Only the training forward counts."""

    def __init__(self, model: Net, units: int):
        self.units, self.active = units, False
        n = len(model.blocks)
        self.prev: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n
        self.changes: list[list[torch.Tensor]] = [[] for _ in range(n)]  # per layer: rows of (dmean, dvar)
        for layer, block in enumerate(cast("Iterable[Block]", model.blocks)):
            block.norm.register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def hook(module, inputs, out):
            if not self.active:
                return
            a = out.detach()
            a = (a if a.ndim == 2 else a.transpose(0, 1).reshape(a.shape[1], -1).T)[:, :self.units]
            self.record(layer, a.mean(0), a.var(0))
        return hook

    def record(self, layer: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """One training step's batch moments of the tracked units of `layer` (a stack computes them itself)."""
        if self.prev[layer] is not None:
            pm, pv = cast("tuple[torch.Tensor, torch.Tensor]", self.prev[layer])
            self.changes[layer].append(torch.stack([(mean - pm).abs(), (var - pv).abs()]))
        self.prev[layer] = (mean, var)

    def rows(self) -> list[dict]:
        """Medians over the steps since the last call and over the tracked units, per layer; then reset."""
        out = []
        for layer, changes in enumerate(self.changes):
            if changes:
                c = torch.stack(changes)  # steps x 2 x units
                out.append({"kind": "moments", "layer": layer, "dmean": c[:, 0].median().item(),
                            "dvar": c[:, 1].median().item()})
            self.changes[layer] = []
        return out

    def state_dict(self) -> dict:
        return {"prev": self.prev, "changes": self.changes}

    def load_state_dict(self, s: dict) -> None:
        self.prev, self.changes = s["prev"], s["changes"]


def first_order_check(model: Net, x: torch.Tensor, target: float = 0.1) -> dict:
    """Deep Learning Book §8.7.1: with cost = mean output and g its gradient, the step eps = target / g.g is
    predicted to the first order to lower the cost by `target`. Returns actual / predicted change, the whole
    gradient's norm and the gradient norm of every hidden layer's weight and of the output weight."""
    with frozen(model):
        model.train()
        params = list(model.parameters())
        cost = model(x).mean()
        grads = torch.autograd.grad(cost, params)
        eps = target / cast(torch.Tensor, sum((g.double() ** 2).sum() for g in grads)).item()
        saved = [p.detach().clone() for p in params]
        _assign(params, [s - eps * g for s, g in zip(saved, grads, strict=True)])
        with torch.no_grad():
            after = model(x).mean()
        _assign(params, saved)
        grad_of = dict(zip(map(id, params), grads, strict=True))
        return {"ratio": (after - cost).item() / -target, "grad_norm": _flat(grads).norm().item(),
                "weight_grad_norms": [grad_of[id(w)].norm().item() for w in _weights(model)]}


def parameter_norms(model: Net) -> dict[str, float]:
    """Frobenius norm of each hidden layer's weight and, where the layer keeps one, its bias (layers 0-based)."""
    out = {}
    for i, block in enumerate(cast("Iterable[Block]", model.blocks)):
        out[f"weight_norm_L{i}"] = cast(torch.Tensor, block.linear.weight).norm().item()
        if block.linear.bias is not None:
            out[f"bias_norm_L{i}"] = cast(torch.Tensor, block.linear.bias).norm().item()
    return out


def weight_grad_norms(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn) -> list[float]:
    """Frobenius norm of the loss gradient for each linear map's weight, input to output, in training mode on
    one batch: where in depth the gradient is large."""
    with frozen(model):
        model.train()
        _, grads = _grads(model, x, y, loss_fn, _weights(model), rng_state())
    return [g.norm().item() for g in grads]


def depth_profile(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn) -> list[dict]:
    """Bjorck et al. 2018: how activations and gradients scale with depth. Per hidden layer, on one batch in training
    mode: the standard deviation of the layer's output h_l (for a residual MLP, the running sum) and the norm of the
    loss gradient with respect to it, dL/dh_l (Frobenius, over the batch)."""
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, out: outputs.append(out)) for b in model.blocks]
    try:
        with frozen(model):
            model.train()
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, outputs)
    finally:
        for h in hooks:
            h.remove()
    return [{"layer": i, "std": h.detach().std().item(), "grad_norm": g.norm().item()}
            for i, (h, g) in enumerate(zip(outputs, grads, strict=True))]


def relative_loss(model: Net, x: torch.Tensor, y: torch.Tensor, loss_fn, etas: list[float]) -> list[float]:
    """Bjorck et al. 2018: L(theta - eta grad L) / L(theta) for each step size eta, on one batch."""
    with frozen(model):
        model.train()
        rng, params, loss0, grads = _all_grads(model, x, y, loss_fn)
        saved = [p.detach().clone() for p in params]
        out = []
        for eta in etas:
            _assign(params, [s - eta * g for s, g in zip(saved, grads, strict=True)])
            set_rng_state(rng)
            with torch.no_grad():
                out.append(loss_fn(model(x), y).item() / loss0)
        _assign(params, saved)
    return out
