"""The two model families: a fully connected MLP and a VGG-style CNN.

Both are a stack of `Block`s (linear map -> normaliser -> [2x2 max-pool, CNN] -> nonlinearity -> dropout) and a
linear head.
The block's `norm` output is the nonlinearity's input, the quantity Ioffe's Fig. 1(b,c) plots; the
probes read it there with a forward hook.
"""

import math
from typing import cast

import torch
from omegaconf import DictConfig
from torch import nn

from bnlab.norms import NORMS

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


class Block(nn.Module):
    def __init__(self, linear: nn.Module, norm: nn.Module, act: nn.Module, dropout: float, pool: bool,
                 residual: bool = False, *, norm_name: str):
        super().__init__()
        self.linear, self.norm, self.act, self.residual = linear, norm, act, residual
        self.norm_name = norm_name  # `norm`'s key in norms.NORMS, by which a stack finds its stacked functions
        # Max-pooling commutes with a nondecreasing nonlinearity (every one in ACTIVATIONS), so pooling first gives
        # the outputs of pooling after it, bitwise, with the nonlinearity on a quarter of the values (~10-15% of a
        # CNN step on one core here). Gradients are bitwise equal too except where a saturating nonlinearity rounds
        # two pre-activations of one window to the same output: pooling after sends the gradient to the first of
        # them, pooling first to the larger one, as the derivative of the exact function does.
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.act(self.pool(self.norm(self.linear(x)))))
        return x + out if self.residual else out


class Net(nn.Module):
    """`blocks` (hidden layers, in order) then `head`."""

    def __init__(self, blocks: list[Block], head: nn.Module, conv: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv:  # an MLP sees the image as one vector
            x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x.flatten(1))


def layer_parameters(net: Net) -> list[list[nn.Parameter]]:
    """The parameters of each layer, input to output: every hidden block's (its linear map's and its normaliser's
    gamma and beta), then the head's. Block-coordinate SGD moves one of these a step."""
    return [list(b.parameters()) for b in net.blocks] + [list(net.head.parameters())]


def chosen_layer(rule: str, step: int, grads: list[list[torch.Tensor | None]]) -> int:
    """The layer block-coordinate SGD moves at `step` (0-based, counting from the run's first step), given each
    layer's gradients: round_robin takes the layers in turn, input to output; largest_grad the one whose gradient
    has the largest Frobenius norm over all its parameters (ties to the lower layer)."""
    if rule == "round_robin":
        return step % len(grads)
    if rule == "largest_grad":
        norms = [sum(float(g.double().pow(2).sum()) for g in gs if g is not None) for gs in grads]
        return max(range(len(norms)), key=lambda i: (norms[i], -i))
    raise ValueError(f"optim.block={rule!r} moves every layer; no layer is chosen")


def _init_linear(layer: nn.Module, cfg: DictConfig) -> None:
    if cfg.init == "default":
        return
    w, bias = cast(torch.Tensor, layer.weight), cast(torch.Tensor | None, layer.bias)  # a Linear's or a Conv2d's
    if cfg.init == "normal":  # Ioffe §4.1: "small random Gaussian values"
        nn.init.normal_(w, cfg.init_mean, cfg.init_std)
    elif cfg.init == "xavier":  # Santurkar App. A: "standard Glorot initialization"
        nn.init.xavier_normal_(w)
    elif cfg.init == "kaiming":
        nn.init.kaiming_normal_(w, nonlinearity="relu")
    if bias is not None:
        nn.init.zeros_(bias)


def hidden_layers(model_cfg: DictConfig) -> int:
    """How many hidden blocks the model has: an MLP's depth, a CNN's conv stages."""
    return model_cfg.depth if model_cfg.arch == "mlp" else len(model_cfg.channels)


def build_model(model_cfg: DictConfig, norm_cfg: DictConfig, in_shape: tuple[int, ...], classes: int) -> Net:
    act_cls = ACTIVATIONS[model_cfg.activation]
    layers = hidden_layers(model_cfg)
    # with norm.last_layers, the layers below the last ones have no normaliser (Bjorck: BN near the output only)
    names = [norm_cfg.name if not norm_cfg.last_layers or i >= layers - norm_cfg.last_layers else "none"
             for i in range(layers)]
    bias = [model_cfg.bias and not NORMS[name].drops_bias for name in names]
    blocks: list[Block] = []
    if model_cfg.arch == "mlp":
        fan_in = math.prod(in_shape)
        for i, name in enumerate(names):
            lin = nn.Linear(fan_in, model_cfg.width, bias=bias[i])
            blocks.append(Block(lin, NORMS[name].build(model_cfg.width, False, norm_cfg), act_cls(),
                                model_cfg.dropout, pool=False, residual=model_cfg.residual and i > 0, norm_name=name))
            fan_in = model_cfg.width
    else:
        c, h, w = in_shape
        for i, (ch, name) in enumerate(zip(model_cfg.channels, names, strict=True)):
            conv = nn.Conv2d(c, ch, kernel_size=3, padding=1, bias=bias[i])
            blocks.append(Block(conv, NORMS[name].build(ch, True, norm_cfg), act_cls(), model_cfg.dropout,
                                pool=True, norm_name=name))
            c, h, w = ch, h // 2, w // 2
        fan_in = c * h * w
    head = nn.Linear(fan_in, classes, bias=model_cfg.bias)
    for layer in [b.linear for b in blocks] + [head]:
        _init_linear(layer, model_cfg)
    return Net(blocks, head, conv=model_cfg.arch == "cnn")


def init_model(model_cfg: DictConfig, norm_cfg: DictConfig, seed: int, in_shape: tuple[int, ...],
               classes: int) -> Net:
    """The network a run with this seed starts from: the global RNG seeded, then built."""
    torch.manual_seed(seed)
    return build_model(model_cfg, norm_cfg, in_shape, classes)
