"""Measurements taken on a model without changing it.

`frozen(model)` restores every buffer (BN running statistics and counters) and the RNG afterwards, so a
probe in training mode sees batch statistics exactly as a training step would, yet the run continues
bitwise as if the probe never happened.
"""

import contextlib

import torch

from bnlab.models import Net

PERCENTILES = (15.0, 50.0, 85.0)  # Ioffe Fig. 1(b,c)


@contextlib.contextmanager
def frozen(model: Net):
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    was_training = model.training
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        torch.set_rng_state(rng)
        model.train(was_training)


def pre_activations(model: Net, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every hidden nonlinearity on batch x, in training mode (batch statistics), as units x values.

    For a conv layer a unit is a channel and its values run over batch and positions (Ioffe §3.2).
    """
    captured: list[torch.Tensor] = []
    hooks = [b.norm.register_forward_hook(lambda m, i, out: captured.append(out.detach()))
             for b in model.blocks]
    try:
        with frozen(model), torch.no_grad():
            model.train()
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [a.transpose(0, 1).reshape(a.shape[1], -1) for a in captured]


def activation_stats(model: Net, x: torch.Tensor, units: int, bins: int, hist_range: float) -> list[dict]:
    """Per hidden layer: percentiles of the whole layer and of units 0..units-1, moments, and a histogram."""
    q = torch.tensor(PERCENTILES) / 100.0
    rows = []
    for layer, a in enumerate(pre_activations(model, x)):
        flat = a.flatten()
        per_unit = torch.quantile(a[:units], q, dim=1).T  # units x 3
        mean, std = flat.mean(), flat.std()
        row = {"layer": layer, "mean": mean.item(), "std": std.item()}
        row.update({f"p{int(p)}": v for p, v in zip(PERCENTILES, torch.quantile(flat, q).tolist(), strict=True)})
        for u in range(per_unit.shape[0]):
            row.update({f"u{u}_p{int(p)}": v for p, v in zip(PERCENTILES, per_unit[u].tolist(), strict=True)})
        row["hist"] = torch.histc(flat, bins=bins, min=-hist_range, max=hist_range).int().tolist()
        row["below"] = int((flat < -hist_range).sum())
        row["above"] = int((flat > hist_range).sum())
        rows.append(row)
    return rows
