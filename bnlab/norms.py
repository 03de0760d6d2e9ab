"""The normaliser registry: every option of the `norm` config group is one entry here.

A normaliser is built as `NORMALIZERS[name](num_features, spatial, cfg)`, where `spatial` says whether
the input is N x C x H x W (conv) or N x C (fully connected). It sits between the linear map and the
nonlinearity (Ioffe §3.2); whether the linear map keeps its bias is `NORMALIZERS_WITH_SHIFT`.
"""

from collections.abc import Callable
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn


def _units_last(x: torch.Tensor) -> torch.Tensor:
    """N x C (x H x W) -> (N*H*W) x C: a conv layer's positions count as examples (Ioffe §3.2)."""
    return x if x.ndim == 2 else x.transpose(1, -1).reshape(-1, x.shape[1])


def _units_back(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.ndim == 2:
        return y
    n, c, h, w = like.shape
    return y.reshape(n, w, h, c).transpose(1, -1)


class AlgOneNoise(nn.Module):
    """Santurkar et al. 2018, Alg. 1: time-varying, non-zero-mean, non-unit-variance noise, training mode only.

    Each step draws a mean shift mu_j ~ U(-n_mu, n_mu) and scale sigma_j ~ U(1, n_sigma) per unit, then per
    example (and position) m_ij ~ U(mu_j - r_mu, mu_j + r_mu) and s_ij ~ N(sigma_j, r_sigma): a_ij <- s_ij a_ij + m_ij.
    """

    def __init__(self, n_mu: float, n_sigma: float, r_mu: float, r_sigma: float):
        super().__init__()
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma

    def sample(self, rows: int, units: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """(mu, sigma) per unit and (m, s) per row and unit, for one step (default: from the global RNG)."""
        mu = (torch.rand(units, generator=generator) * 2 - 1) * self.n_mu
        sigma = 1 + torch.rand(units, generator=generator) * (self.n_sigma - 1)
        m = mu + (torch.rand(rows, units, generator=generator) * 2 - 1) * self.r_mu
        s = sigma + torch.randn(rows, units, generator=generator) * self.r_sigma
        return mu, sigma, m, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        a = _units_last(x)
        _, _, m, s = self.sample(*a.shape)
        return _units_back(s.to(a) * a + m.to(a), x)


class LpNorm(nn.Module):
    """Santurkar et al. 2018 §3.3: subtract the batch mean, divide by the mean l_p norm of the un-centred
    activations ("before shifting the mean"); p = inf divides by max |x|. Running averages serve eval mode."""

    def __init__(self, num_features: int, p: float, eps: float, momentum: float, affine: bool):
        super().__init__()
        self.p, self.eps, self.momentum = p, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _units_last(x)
        if self.training:
            y = lp_normalise(a, 0, self.p, self.eps, self.running_mean, self.running_scale, self.momentum)
        else:
            y = (a - self.running_mean) / (self.running_scale + self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return _units_back(y, x)


def lp_normalise(a: torch.Tensor, dim: int, p: float, eps: float, running_mean: torch.Tensor,
                 running_scale: torch.Tensor, momentum: float) -> torch.Tensor:
    """LpNorm in training mode over the batch dimension `dim` (a run's N x C, or a stack's K x C x N), updating
    the running averages in place (shaped as the statistics without `dim`)."""
    mean = a.mean(dim, keepdim=True)
    scale = a.abs().amax(dim, keepdim=True) if p == float("inf") else \
        a.abs().pow(p).mean(dim, keepdim=True).pow(1 / p)
    with torch.no_grad():
        running_mean.lerp_(mean.squeeze(dim), momentum)
        running_scale.lerp_(scale.squeeze(dim), momentum)
    return (a - mean) / (scale + eps)


class BatchRenorm(nn.Module):
    """Ioffe 2017, Batch Renormalization: BN whose batch statistics are corrected towards the running ones,
    x_hat = (x - mu_B) / sigma_B * r + d with r = clip(sigma_B / sigma, 1/rmax, rmax) and
    d = clip((mu_B - mu) / sigma, -dmax, dmax) held constant in backprop; plain BN during the warm-up."""

    def __init__(self, num_features: int, cfg: DictConfig):
        super().__init__()
        self.eps, self.momentum = cfg.eps, cfg.momentum
        self.rmax, self.dmax, self.warmup = cfg.renorm_rmax, cfg.renorm_dmax, cfg.renorm_warmup
        self.weight = nn.Parameter(torch.ones(num_features)) if cfg.affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if cfg.affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _units_last(x)
        if self.training:
            y = renormalise(self, a, 0, self.running_mean, self.running_var, self.steps)
        else:
            y = (a - self.running_mean) / (self.running_var + self.eps).sqrt()
        if self.weight is not None:
            y = y * self.weight + self.bias
        return _units_back(y, x)


def renormalise(norm: BatchRenorm, a: torch.Tensor, dim: int, running_mean: torch.Tensor,
                running_var: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """BatchRenorm in training mode over the batch dimension `dim` (a run's N x C, or a stack's K x C x N) with
    `norm`'s settings and the given statistics, updated in place (shaped as the statistics without `dim`)."""
    mean, var = a.mean(dim, keepdim=True), a.var(dim, unbiased=False, keepdim=True)
    std = (var + norm.eps).sqrt()
    y = (a - mean) / std
    # r and d only after the warm-up: before it an exploding run's r can be inf / inf (the members of a stack
    # start together, so they leave the warm-up together)
    if bool((steps >= norm.warmup).all()):
        running_std = (running_var + norm.eps).sqrt().unsqueeze(dim)
        r = (std.detach() / running_std).clamp(1 / norm.rmax, norm.rmax)
        d = ((mean.detach() - running_mean.unsqueeze(dim)) / running_std).clamp(-norm.dmax, norm.dmax)
        y = y * r + d
    with torch.no_grad():
        running_mean.lerp_(mean.squeeze(dim), norm.momentum)
        running_var.lerp_(a.var(dim, unbiased=True), norm.momentum)
        steps += 1
    return y


class DetachedBatchNorm(nn.Module):
    """BN whose batch mean and variance are constants in backprop: normalisation computed outside the gradient
    step, the alternative Ioffe & Szegedy §2 reject. The gradient then ignores that the statistics move with the
    parameters, so it can propose changes (a bias shift, a growing scale) that the normalisation undoes."""

    def __init__(self, num_features: int, cfg: DictConfig):
        super().__init__()
        self.eps, self.momentum = cfg.eps, cfg.momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if cfg.affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if cfg.affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _units_last(x)
        if self.training:
            with torch.no_grad():  # BN's statistics and running averages, outside autograd
                mean, var = a.mean(0), a.var(0, unbiased=False)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(a.var(0, unbiased=True), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (a - mean) / (var + self.eps).sqrt()
        if self.weight is not None:
            y = y * self.weight + self.bias
        return _units_back(y, x)


def _none(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    return nn.Identity()


def _batch(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    cls = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return cls(num_features, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine)


def _noise(cfg: DictConfig) -> AlgOneNoise:
    return AlgOneNoise(cfg.noise_mu, cfg.noise_sigma, cfg.noise_r_mu, cfg.noise_r_sigma)


def _lp(num_features: int, spatial: bool, cfg: DictConfig, p: float) -> nn.Module:
    return LpNorm(num_features, p, cfg.eps, cfg.momentum, cfg.affine)


NORMALIZERS: dict[str, Callable[[int, bool, DictConfig], nn.Module]] = {
    "none": _none,
    "batch": _batch,
    "noisy_batch": lambda n, spatial, cfg: nn.Sequential(_batch(n, spatial, cfg), _noise(cfg)),  # noise after BN
    "noisy_none": lambda n, spatial, cfg: _noise(cfg),  # the same noise on the standard network
    # Ba et al. 2016: statistics over a layer's units per example (for a conv layer, over C x H x W)
    "layer": lambda n, spatial, cfg: nn.GroupNorm(1, n, eps=cfg.eps, affine=cfg.affine) if spatial
    else nn.LayerNorm(n, eps=cfg.eps, elementwise_affine=cfg.affine),
    # Wu & He 2018: statistics over groups of units per example
    "group": lambda n, spatial, cfg: nn.GroupNorm(cfg.groups, n, eps=cfg.eps, affine=cfg.affine),
    "batch_renorm": lambda n, spatial, cfg: BatchRenorm(n, cfg),
    # Ioffe & Szegedy §2: BN's statistics held constant in backprop; the linear map keeps its bias, which is what
    # the paper says then drifts
    "batch_detached": lambda n, spatial, cfg: DetachedBatchNorm(n, cfg),
    "lp1": partial(_lp, p=1.0),
    "lp2": partial(_lp, p=2.0),
    "lpinf": partial(_lp, p=float("inf")),
}

# Normalisers that subtract a mean make the preceding bias redundant: beta takes its role (Ioffe §3.2).
NORMALIZERS_WITH_SHIFT = {"batch", "noisy_batch", "lp1", "lp2", "lpinf", "layer", "group", "batch_renorm"}

# Normalisers whose training-mode output depends on other examples in the batch (a batch of one is degenerate).
BATCH_DEPENDENT = {"batch", "noisy_batch", "lp1", "lp2", "lpinf", "batch_renorm", "batch_detached"}

# Normalisers that map each unit by one affine function over the whole batch (in training mode): one example's
# output depends on its own input through a per-unit slope, which is what a layer's Jacobian can be read from.
PER_UNIT_AFFINE = {"none", "batch", "lp1", "lp2", "lpinf", "batch_renorm", "batch_detached"}
