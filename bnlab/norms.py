"""The normaliser registry: every option of the `norm` config group is one entry here.

A normaliser is built as `NORMALIZERS[name](num_features, spatial, cfg)`, where `spatial` says whether
the input is N x C x H x W (conv) or N x C (fully connected). It sits between the linear map and the
nonlinearity (Ioffe §3.2); whether the linear map keeps its bias is `NORMALIZERS_WITH_SHIFT`.
"""

from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn


def _none(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    return nn.Identity()


def _batch(num_features: int, spatial: bool, cfg: DictConfig) -> nn.Module:
    cls = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return cls(num_features, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine)


NORMALIZERS: dict[str, Callable[[int, bool, DictConfig], nn.Module]] = {
    "none": _none,
    "batch": _batch,
}

# Normalisers that subtract a mean make the preceding bias redundant: beta takes its role (Ioffe §3.2).
NORMALIZERS_WITH_SHIFT = {"batch"}

# Normalisers whose training-mode output depends on other examples in the batch (a batch of one is degenerate).
BATCH_DEPENDENT = {"batch"}
