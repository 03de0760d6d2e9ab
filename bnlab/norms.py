"""The normaliser registry: every option of the `norm` config group is one entry here.

`NORMS[name]` is option `name`'s one record (`NormSpec`): the module a run builds, whether the linear map before
it keeps its bias, its label and colour in figures, and its stacked functions; every set of names below is read
from it. A normaliser sits between the linear map and the nonlinearity (Ioffe §3.2).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
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

    running_mean: torch.Tensor  # buffers, declared for the type checker
    running_scale: torch.Tensor

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
            y = y * self.weight + cast(torch.Tensor, self.bias)  # affine: both or neither
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

    running_mean: torch.Tensor  # buffers, declared for the type checker
    running_var: torch.Tensor
    steps: torch.Tensor

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
            y = y * self.weight + cast(torch.Tensor, self.bias)  # affine: both or neither
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

    running_mean: torch.Tensor  # buffers, declared for the type checker
    running_var: torch.Tensor

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
            y = y * self.weight + cast(torch.Tensor, self.bias)  # affine: both or neither
        return _units_back(y, x)


def _none(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    return nn.Identity()


def _batch(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    cls = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return cls(num_features, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine)


def _noise(cfg: DictConfig) -> AlgOneNoise:
    return AlgOneNoise(cfg.noise_mu, cfg.noise_sigma, cfg.noise_r_mu, cfg.noise_r_sigma)


def _layer(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    """Statistics over a layer's units per example; for a conv layer, over C x H x W."""
    return nn.GroupNorm(1, num_features, eps=cfg.eps, affine=cfg.affine) if spatial \
        else nn.LayerNorm(num_features, eps=cfg.eps, elementwise_affine=cfg.affine)


def _lp(num_features: int, spatial: bool, cfg: DictConfig, p: float) -> nn.Module:
    return LpNorm(num_features, p, cfg.eps, cfg.momentum, cfg.affine)


@dataclass(frozen=True)
class Members:
    """A normaliser's state across the K runs of a stack: each parameter and buffer of a run alone's module,
    stacked member by member (K x units) under its name in that module, and each member's generator."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    generators: list[torch.Generator]  # member k's noise draws, in the order its run alone draws them
    # at most the stack's SMALL_BATCH examples: there the stack keeps activations batch-major in memory
    small_batch: bool

    def under(self, prefix: str) -> "Members":
        """The state named under `prefix` (a block's normaliser, a part of an nn.Sequential one), by the names
        below it."""
        def named_under(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}
        return Members(named_under(self.params), named_under(self.buffers), self.generators, self.small_batch)

    def statistic(self, name: str) -> torch.Tensor:
        """Buffer `name`, K x units, as K x units x 1 to apply over each member's batch."""
        return self.buffers[name].unsqueeze(2)


# What a normaliser does to a stack's activations (K x units x batch), member by member, given a run alone's
# module (for its settings) and the members' state; updates that state in place as the module updates its own.
# The module is Any here: each function names the type of module it is for.
StackedNorm = Callable[[Any, torch.Tensor, Members], torch.Tensor]


def _affine_stacked(y: torch.Tensor, members: Members) -> torch.Tensor:
    """Each member's gamma and beta (K x units) on K x units x batch, as the modules apply them after normalising."""
    weight, bias = members.params.get("weight"), members.params.get("bias")
    return y if weight is None else y * weight.unsqueeze(2) + cast(torch.Tensor, bias).unsqueeze(2)


def _unchanged_stacked(norm: nn.Module, x: torch.Tensor, members: Members) -> torch.Tensor:
    return x


def _batch_norm_stacked(norm: nn.BatchNorm1d, x: torch.Tensor, members: Members, training: bool) -> torch.Tensor:
    """nn.BatchNorm1d of every member as one F.batch_norm call over K*units on (1, K*units, batch)."""
    k, c, n = x.shape
    weight, bias = members.params.get("weight"), members.params.get("bias")
    return F.batch_norm(x.reshape(1, k * c, n), members.buffers["running_mean"].view(-1),  # a copy at a small batch
                        members.buffers["running_var"].view(-1), None if weight is None else weight.view(-1),
                        None if bias is None else bias.view(-1), training=training, momentum=cast(float, norm.momentum),
                        eps=norm.eps).view(k, c, n)


def _batch_train(norm: nn.BatchNorm1d, x: torch.Tensor, members: Members) -> torch.Tensor:
    y = _batch_norm_stacked(norm, x, members, training=True)
    members.buffers["num_batches_tracked"] += 1
    return y


def _batch_eval(norm: nn.BatchNorm1d, x: torch.Tensor, members: Members) -> torch.Tensor:
    return _batch_norm_stacked(norm, x, members, training=False)


def _noise_train(norm: AlgOneNoise, x: torch.Tensor, members: Members) -> torch.Tensor:
    """Each member's noise from its own generator, as its run alone draws it."""
    k, c, n = x.shape
    draws = [norm.sample(n, c, g)[2:] for g in members.generators]
    shift, scale = (torch.stack([d[i] for d in draws]).transpose(1, 2).contiguous() for i in (0, 1))
    return scale * x + shift


def _noisy_batch_train(norm: nn.Sequential, x: torch.Tensor, members: Members) -> torch.Tensor:
    return _noise_train(cast(AlgOneNoise, norm[1]), _batch_train(cast(nn.BatchNorm1d, norm[0]), x, members.under("0.")),
                        members.under("1."))


def _noisy_batch_eval(norm: nn.Sequential, x: torch.Tensor, members: Members) -> torch.Tensor:
    return _batch_eval(cast(nn.BatchNorm1d, norm[0]), x, members.under("0."))  # the noise is off in eval mode


def _per_example_stacked(x: torch.Tensor, members: Members,
                         normalise_rows: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A normaliser with statistics per example (examples x units rows, each laid out as a run alone lays it
    out) on K x units x batch; the same in training and eval mode."""
    k, c, n = x.shape
    y = normalise_rows(x.transpose(1, 2).reshape(k * n, c)).view(k, n, c).transpose(1, 2)
    return _affine_stacked(y if members.small_batch else y.contiguous(), members)  # the layout the stack keeps


def _layer_stacked(norm: nn.LayerNorm | nn.GroupNorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    return _per_example_stacked(x, members, lambda rows: F.layer_norm(rows, (rows.shape[1],), eps=norm.eps))


def _group_stacked(norm: nn.GroupNorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    return _per_example_stacked(x, members, lambda rows: F.group_norm(rows, norm.num_groups, eps=norm.eps))


def _lp_train(norm: LpNorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    """LpNorm's own training step over each member's batch (dim 2)."""
    return _affine_stacked(lp_normalise(x, 2, norm.p, norm.eps, members.buffers["running_mean"],
                                        members.buffers["running_scale"], norm.momentum), members)


def _lp_eval(norm: LpNorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    return _affine_stacked((x - members.statistic("running_mean")) / (members.statistic("running_scale") + norm.eps),
                           members)


def _renorm_train(norm: BatchRenorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    """BatchRenorm's own training step over each member's batch (dim 2)."""
    y = renormalise(norm, x, 2, *(members.buffers[b] for b in ("running_mean", "running_var", "steps")))
    return _affine_stacked(y, members)


def _running_mean_var_eval(norm: BatchRenorm | DetachedBatchNorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    """Eval mode of a normaliser that keeps BN's running mean and variance as buffers of its own."""
    std = (members.statistic("running_var") + norm.eps).sqrt()
    return _affine_stacked((x - members.statistic("running_mean")) / std, members)


def _detached_train(norm: DetachedBatchNorm, x: torch.Tensor, members: Members) -> torch.Tensor:
    """DetachedBatchNorm's training step over each member's batch (dim 2): BN's statistics and running averages
    outside autograd."""
    with torch.no_grad():
        mean, var = x.mean(2, keepdim=True), x.var(2, unbiased=False, keepdim=True)
        members.buffers["running_mean"].lerp_(mean.squeeze(2), norm.momentum)
        members.buffers["running_var"].lerp_(x.var(2, unbiased=True), norm.momentum)
    return _affine_stacked((x - mean) / (var + norm.eps).sqrt(), members)


DEFAULT_COLOR = "#000000"  # a normaliser that has no colour of its own yet is drawn black, never a crash


@dataclass(frozen=True)
class NormSpec:
    """One option of the `norm` config group: the module a run alone builds, as `build(num_features, spatial,
    cfg)` (`spatial`: the input is N x C x H x W, else N x C), what the rest of the code needs to know of it, how
    figures show it, and what it does in a stack (`StackedMLP`), where it trains alone without both functions."""

    build: Callable[[int, bool, DictConfig], nn.Module]
    # it subtracts a mean, so the linear map before it drops its bias: beta takes its role (Ioffe §3.2)
    drops_bias: bool
    # its training-mode output depends on other examples in the batch (a batch of one is degenerate)
    batch_dependent: bool
    # it maps each unit by one affine function over the whole batch (in training mode): one example's output
    # depends on its own input through a per-unit slope, which is what a layer's Jacobian can be read from
    per_unit_affine: bool
    label: str  # its name in figures and tables
    color: str = DEFAULT_COLOR  # the same in every figure
    stacked_train: StackedNorm | None = None  # what it does in training mode in a stack
    stacked_eval: StackedNorm | None = None  # ... and in eval mode (running statistics, no noise)

    def __post_init__(self) -> None:
        if (self.stacked_train is None) != (self.stacked_eval is None):
            raise ValueError("a stacked normaliser needs both its training and its eval function")


NORMS: dict[str, NormSpec] = {
    "none": NormSpec(_none, drops_bias=False, batch_dependent=False, per_unit_affine=True, label="no BN",
                     color="#444444", stacked_train=_unchanged_stacked, stacked_eval=_unchanged_stacked),
    "batch": NormSpec(_batch, drops_bias=True, batch_dependent=True, per_unit_affine=True, label="BN",
                      color="#1f77b4", stacked_train=_batch_train, stacked_eval=_batch_eval),
    # noise after BN
    "noisy_batch": NormSpec(lambda n, spatial, cfg: nn.Sequential(_batch(n, spatial, cfg), _noise(cfg)),
                            drops_bias=True, batch_dependent=True, per_unit_affine=False, label="noisy BN",
                            color="#9467bd", stacked_train=_noisy_batch_train, stacked_eval=_noisy_batch_eval),
    # the same noise on the standard network
    "noisy_none": NormSpec(lambda n, spatial, cfg: _noise(cfg),
                           drops_bias=False, batch_dependent=False, per_unit_affine=False, label="noise, no BN",
                           color="#d62728", stacked_train=_noise_train, stacked_eval=_unchanged_stacked),
    # Ba et al. 2016
    "layer": NormSpec(_layer, drops_bias=True, batch_dependent=False, per_unit_affine=False, label="LayerNorm",
                      color="#2ca02c", stacked_train=_layer_stacked, stacked_eval=_layer_stacked),
    # Wu & He 2018: statistics over groups of units per example
    "group": NormSpec(lambda n, spatial, cfg: nn.GroupNorm(cfg.groups, n, eps=cfg.eps, affine=cfg.affine),
                      drops_bias=True, batch_dependent=False, per_unit_affine=False, label="GroupNorm",
                      color="#17becf", stacked_train=_group_stacked, stacked_eval=_group_stacked),
    "batch_renorm": NormSpec(lambda n, spatial, cfg: BatchRenorm(n, cfg), drops_bias=True, batch_dependent=True,
                             per_unit_affine=True, label="BatchRenorm", color="#ff7f0e",
                             stacked_train=_renorm_train, stacked_eval=_running_mean_var_eval),
    # Ioffe & Szegedy §2: BN's statistics held constant in backprop; the linear map keeps its bias, which is what
    # the paper says then drifts
    "batch_detached": NormSpec(lambda n, spatial, cfg: DetachedBatchNorm(n, cfg), drops_bias=False,
                               batch_dependent=True, per_unit_affine=True,
                               label="BN, statistics outside the gradient", color="#7f7f7f",
                               stacked_train=_detached_train, stacked_eval=_running_mean_var_eval),
    "lp1": NormSpec(partial(_lp, p=1.0), drops_bias=True, batch_dependent=True, per_unit_affine=True,
                    label="ℓ1 norm", color="#8c564b", stacked_train=_lp_train, stacked_eval=_lp_eval),
    "lp2": NormSpec(partial(_lp, p=2.0), drops_bias=True, batch_dependent=True, per_unit_affine=True,
                    label="ℓ2 norm", color="#e377c2", stacked_train=_lp_train, stacked_eval=_lp_eval),
    "lpinf": NormSpec(partial(_lp, p=float("inf")), drops_bias=True, batch_dependent=True, per_unit_affine=True,
                      label="ℓ∞ norm", color="#bcbd22", stacked_train=_lp_train, stacked_eval=_lp_eval),
}

BATCH_DEPENDENT = {name for name, spec in NORMS.items() if spec.batch_dependent}
PER_UNIT_AFFINE = {name for name, spec in NORMS.items() if spec.per_unit_affine}
STACKABLE_NORMS = {name for name, spec in NORMS.items() if spec.stacked_train is not None}
