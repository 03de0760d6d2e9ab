"""The stack: K runs' MLPs trained as one model (`StackedMLP`, a `stepping.Stepper` as a run alone's
`SingleModel` is), and which runs may share a stack (`stack_key`).

A small MLP step is mostly per-operation overhead, so K models whose weights are stacked into K x out x in
tensors and multiplied with one `bmm` cost far less than K separate steps. The runs of a stack differ only in
seed, optimiser, init and dropout rate; each keeps its own initialisation (built by the ordinary `build_model`
under its own seed), data order, learning rate, momentum, weight decay, dropout masks and BN running statistics;
`member(k)` hands out member k as an ordinary `Net`, so probes and checkpoints are the single-run code;
evaluation scores every member in one eval-mode pass (`StackedMLP.evaluate`). Members match the same run
trained alone to float rounding.

Only MLPs are stacked, with a normaliser whose registry entry has stacked functions (`norms.NORMS`; a new one
trains alone until its entry has them), no moment penalty and plain SGD (optim.block=all); every other run, and
one that asks to (trainer.alone), trains alone. A run alone draws
its dropout masks and noise from the global RNG, which nothing else in its training step touches; a member draws
them from its own generator, started in the same state and drawn in the same order, so its masks and noise are
those of its run alone. Each member's moment tracker is fed the batch moments the stack computes, where a run
alone's tracker hooks its forward. Probes that move the weights (ICS, landscape) work on member k's copy.
Activations are kept as K x features x batch so that BN over all K x width units is one `F.batch_norm` call
on a free view (1, K*width, batch). At a small batch (`SMALL_BATCH`) a step is mostly passes over the members'
weights: there the activations are batch-major in memory (the same shape, transposed strides), the products x^T W^T,
and with plain SGD `small_batch_step` updates each weight in place.
"""

import hashlib
import json
from typing import cast

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.func import stack_module_state

from bnlab.config import flatten, may_stack, shared_in_stack
from bnlab.models import Block, Net
from bnlab.norms import NORMS, STACKABLE_NORMS, Members, StackedNorm
from bnlab.probes import MomentTracker
from bnlab.runtime import resolve_device
from bnlab.stepping import Stepper


def stack_key(cfg: DictConfig) -> str | None:
    """Runs with equal keys can train as one stack; None: this run must train alone. config.KEY_ROLES says what a
    stack needs and which keys its runs share."""
    values = flatten(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    values["device"] = resolve_device(values["device"])  # the device it trains on, as its identity records it
    if not may_stack(values, STACKABLE_NORMS):
        return None
    shared = {k: v for k, v in values.items() if shared_in_stack(k)}
    return hashlib.sha1(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


EVAL_CHUNK = 1000  # images per stacked forward in eval mode
# Up to this batch a stacked step multiplies as x^T W^T and updates the weights in place
# (`StackedMLP.small_batch_step`): there a step is mostly passes over the members' weights. Above it W x and the
# autograd update are faster.
SMALL_BATCH = 8

# Per-member losses of K x batch x outputs, reduced as `stepping.LOSSES` reduces one model's.
STACKED_LOSSES = {
    "cross_entropy": lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    .view(y.shape).mean(1),
    "mse": lambda out, y: (out - y).pow(2).flatten(1).mean(1),
    "mse_sum": lambda out, y: (out - y).pow(2).flatten(1).sum(1),
}


def _stacked_functions(norm_name: str) -> tuple[StackedNorm, StackedNorm]:
    """Normaliser `norm_name`'s stacked training and eval functions, as its registry entry gives them."""
    spec = NORMS[norm_name]
    if spec.stacked_train is None or spec.stacked_eval is None:
        raise ValueError(f"norm {norm_name!r} cannot be stacked: its entry in norms.NORMS has no stacked functions")
    return spec.stacked_train, spec.stacked_eval


def _norm_members(layer: int, params: dict, buffers: dict, generators: list, batch: int) -> Members:
    """Block `layer`'s normaliser's share of the stack's parameters and buffers, by its module's own names."""
    return Members(params, buffers, generators, small_batch=batch <= SMALL_BATCH).under(f"blocks.{layer}.norm.")


def _momentum_buffer(opt: torch.optim.SGD, param: torch.Tensor) -> torch.Tensor:
    buf = opt.state.get(param, {}).get("momentum_buffer")
    return torch.zeros_like(param) if buf is None else buf


class StackedMLP(Stepper):
    """K `Net` MLPs and their `torch.optim.SGD`s as one stacked model with a hand-written stacked SGD step."""

    def __init__(self, nets: list[Net], opts: list[torch.optim.SGD], rng_states: list[torch.Tensor],
                 train_x: torch.Tensor, train_y: torch.Tensor, loss: str, trackers: list[MomentTracker] | None = None):
        self.nets = nets  # member k's own Net (its own dropout rate), loaded with its weights when asked for
        # each block's stacked normaliser functions, a run alone's module (for its settings) and nonlinearity
        blocks = cast(list[Block], list(nets[0].blocks))  # an nn.ModuleList's items are typed as plain Modules
        self.blocks = [(*_stacked_functions(b.norm_name), b.norm, b.act) for b in blocks]
        self.residual = [b.residual for b in blocks]  # model.residual: a block adds its input
        self.depth = len(self.blocks)
        self.params, self.buffers = stack_module_state(nets)
        groups = [o.param_groups[0] for o in opts]
        self.hyper = {h: torch.tensor([float(g[h]) for g in groups]) for h in ("lr", "momentum", "weight_decay")}
        # torch's SGD creates a momentum buffer at the first step, as the gradient itself: zeros + gradient
        per_net = [list(net.parameters()) for net in nets]
        self.momentum_buffers = {
            name: torch.stack([_momentum_buffer(opt, params[j]) for opt, params in zip(opts, per_net, strict=True)])
            for j, (name, _) in enumerate(nets[0].named_parameters())}
        self.decay, self.momentum = bool(self.hyper["weight_decay"].any()), bool(self.hyper["momentum"].any())
        # rng_states: the global RNG of each run alone after its initialisation, where its dropout draws start
        self.generators = [torch.Generator().set_state(s) for s in rng_states]
        self.dropout = [net.blocks[0].drop.p if isinstance(net.blocks[0].drop, torch.nn.Dropout) else 0.0
                        for net in nets]  # one rate per run (model.dropout)
        self.train_x, self.train_y = train_x.flatten(1), train_y
        self.loss = STACKED_LOSSES[loss]
        self.classify = loss == "cross_entropy"
        self.trackers = trackers or []  # each member's MomentTracker, fed by the stack (its hooks stay idle)

    def __len__(self) -> int:
        return len(self.hyper["lr"])

    def forward(self, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        """x: K x inputs x batch -> K x outputs x batch, each member with its own weights and BN statistics.
        `taps`: a list to which each linear map adds (weight's name, input, output), its weight left out of the
        graph (`small_batch_step`)."""
        for i, (stacked_train, _, norm, act) in enumerate(self.blocks):
            h = self.linear(f"blocks.{i}.linear", x, taps)
            h = stacked_train(norm, h, _norm_members(i, self.params, self.buffers, self.generators, h.shape[2]))
            if self.trackers:
                self.track_moments(i, h)
            h = act(h)
            if any(self.dropout):
                h = h * self.dropout_masks(h.shape[2], h.shape[1])
            x = x + h if self.residual[i] else h
        return self.linear("head", x, taps)

    def linear(self, name: str, x: torch.Tensor, taps: list | None) -> torch.Tensor:
        """The linear map `name` (K x out x in weights, K x out bias) of each member on K x in x batch."""
        w, bias = self.params[f"{name}.weight"], self.params.get(f"{name}.bias")
        w = w.detach() if taps is not None else w  # `small_batch_step` applies this weight's gradient itself
        if x.shape[2] > SMALL_BATCH:
            out = torch.bmm(w, x) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, x)
        else:  # x^T W^T, as a run alone's F.linear: twice as fast as W x at batch 2 (one pass over the weights)
            xt, wt = x.transpose(1, 2), w.transpose(1, 2)
            # left batch-major in memory: the next x^T and a per-example normaliser's rows are then free views
            out = (torch.bmm(xt, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), xt, wt)).transpose(1, 2)
        if taps is not None:
            out = out if out.requires_grad else out.requires_grad_()  # a first layer without bias
            taps.append((f"{name}.weight", x.detach(), out))
        return out

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, members: list[int]) -> list[tuple[float, float | None]]:
        """Loss and accuracy of each listed member in eval mode on one set, as `stepping.evaluate` scores it alone.

        The set is the same for every member, so the first layer is one GEMM over every member's weights side by
        side: far fewer, larger products than a `bmm` over K copies of the set."""
        index = torch.tensor(members)
        p = {n: t.detach()[index] for n, t in self.params.items()}
        b = {n: t[index] for n, t in self.buffers.items()}
        k, total = len(members), torch.zeros(len(members), dtype=torch.float64)
        correct = torch.zeros(len(members), dtype=torch.int64)
        for i in range(0, len(x), EVAL_CHUNK):
            out = self._eval_forward(x[i:i + EVAL_CHUNK].flatten(1), p, b).transpose(1, 2)  # K x chunk x outputs
            target = y[i:i + EVAL_CHUNK]
            if self.classify:
                total += F.cross_entropy(out.flatten(0, 1), target.repeat(k), reduction="none").view(k, -1).sum(1)
                correct += (out.argmax(2) == target).sum(1)
            else:
                total += (out - target).pow(2).flatten(1).sum(1)
        if self.classify:
            return [(t / len(x), c / len(x)) for t, c in zip(total.tolist(), correct.tolist(), strict=True)]
        return [(t if self.loss is STACKED_LOSSES["mse_sum"] else t / y.numel(), None) for t in total.tolist()]

    def _eval_forward(self, x: torch.Tensor, p: dict, b: dict) -> torch.Tensor:
        """x: batch x inputs, shared by every member -> K x outputs x batch, in eval mode."""
        a = x  # block i's input: the shared images for the first, K x width x batch after
        for i, (_, stacked_eval, norm, act) in enumerate(self.blocks):
            w, bias = p[f"blocks.{i}.linear.weight"], p.get(f"blocks.{i}.linear.bias")
            if i == 0:  # one GEMM, (K*width) x batch, laid out as K x width x batch: the layout bmm and the norms take
                k, width, inputs = w.shape
                h = torch.mm(w.view(k * width, inputs), x.t()) if bias is None else \
                    torch.addmm(bias.view(-1, 1), w.view(k * width, inputs), x.t())
                h = h.view(k, width, -1)
            else:
                h = torch.bmm(w, a) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, a)
            h = stacked_eval(norm, h, _norm_members(i, p, b, [], h.shape[2]))  # eval mode draws no noise
            a = a + act(h) if self.residual[i] else act(h)
        bias = p.get("head.bias")
        return torch.bmm(p["head.weight"], a) if bias is None else torch.baddbmm(bias.unsqueeze(2), p["head.weight"], a)

    def track_moments(self, layer: int, x: torch.Tensor) -> None:
        """Each member's moment tracker gets the batch moments of its tracked units, as its hook would."""
        a = x.detach()[:, :self.trackers[0].units]
        means, variances = a.mean(2), a.var(2)
        for k, tracker in enumerate(self.trackers):
            tracker.record(layer, means[k], variances[k])

    def dropout_masks(self, batch: int, width: int) -> torch.Tensor:
        """K x width x batch: member k's mask drawn as `F.dropout` draws it for the run alone (batch x width)."""
        return torch.stack([torch.empty(batch, width).bernoulli_(1 - p, generator=g).div_(1 - p) if p > 0
                            else torch.ones(batch, width)  # a run without dropout draws nothing
                            for p, g in zip(self.dropout, self.generators, strict=True)]
                           ).transpose(1, 2).contiguous()  # x * mask stays contiguous: the same bmm kernels as without

    def step(self, idx: torch.Tensor) -> tuple[list[float], list[int] | None]:
        """One SGD step of every member on its own batch (idx: K x batch); returns losses and correct counts."""
        k, n = idx.shape
        flat = idx.flatten()
        x = self.train_x.index_select(0, flat).view(k, n, -1).transpose(1, 2)
        y = self.train_y.index_select(0, flat).view(k, n, *self.train_y.shape[1:])
        if n <= SMALL_BATCH and not (self.momentum or self.decay):
            return self.small_batch_step(x, y)
        out = self.forward(x).transpose(1, 2)  # K x batch x outputs
        losses = self.loss(out, y)
        losses.sum().backward()  # member k's gradient is that of its own loss alone
        with torch.no_grad():
            for name, param in self.params.items():
                self.sgd_update(name, param.grad)
                param.grad = None
            correct = (out.argmax(2) == y).sum(1).tolist() if self.classify else None
        return losses.tolist(), correct

    def sgd_update(self, name: str, grad: torch.Tensor) -> None:
        """torch.optim.SGD's update of parameter `name` (K x ...) with one rate, momentum and decay per member.
        `addcmul_(t, g, value=-1)` rounds exactly as SGD's `add_(g, alpha=-t)` (checked bitwise) and costs 0.2 ms
        on the 16 x 100 x 784 first layer; `sub_(t * g)` rounded differently (t * g first, into a temporary) and
        cost 1.2 ms."""
        param = self.params[name]
        shape = (-1,) + (1,) * (param.ndim - 1)
        if self.decay:
            grad = torch.addcmul(grad, self.hyper["weight_decay"].view(shape), param)
        if self.momentum:
            grad = self.momentum_buffers[name].mul_(self.hyper["momentum"].view(shape)).add_(grad)
        param.addcmul_(self.hyper["lr"].view(shape), grad, value=-1)

    def small_batch_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[int] | None]:
        """`step` at a small batch with plain SGD, each weight matrix updated in place by W -= lr dh x^T (dh: the
        gradient at its output) without its gradient ever written out: at batch 2 a member's step is mostly
        passes over its weights, and this saves two of five. Its rounding differs from a run alone's (lr scales dh
        before the sum over the batch, which accumulates into W) by about an ulp of each weight per step."""
        taps: list = []
        out = self.forward(x, taps).transpose(1, 2)
        losses = self.loss(out, y)
        rest = [name for name in self.params if name not in {name for name, _, _ in taps}]
        grads = torch.autograd.grad(losses.sum(), [h for _, _, h in taps] + [self.params[n] for n in rest],
                                    allow_unused=True)  # one the loss does not reach stays, as in SGD
        lr = self.hyper["lr"]
        with torch.no_grad():
            for (name, inputs, _), dh in zip(taps, grads[:len(taps)], strict=True):
                self.params[name].baddbmm_(dh * -lr.view(-1, 1, 1), inputs.transpose(1, 2))
            for name, grad in zip(rest, grads[len(taps):], strict=True):
                if grad is not None:  # biases and the normalisers' gamma and beta: SGD's own update
                    self.sgd_update(name, grad)
            correct = (out.argmax(2) == y).sum(1).tolist() if self.classify else None
        return losses.tolist(), correct

    def drop_diverged(self, diverged: list[int]) -> None:
        """Drop the listed members (diverged ones), so that their NaNs never meet the others' numbers."""
        members = [k for k in range(len(self)) if k not in diverged]
        index = torch.tensor(members)
        self.params = {n: p.detach()[index].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[index] for n, b in self.buffers.items()}
        self.momentum_buffers = {n: b[index] for n, b in self.momentum_buffers.items()}
        self.hyper = {h: v[index] for h, v in self.hyper.items()}
        self.nets = [self.nets[k] for k in members]
        self.generators = [self.generators[k] for k in members]
        self.dropout = [self.dropout[k] for k in members]
        self.trackers = [self.trackers[k] for k in members] if self.trackers else []

    def member(self, k: int) -> Net:
        """Member k as an ordinary Net, its weights as they are now.

        The global RNG is set to member k's, as its run alone would have it: a probe in training mode draws
        member k's dropout masks (probes restore the RNG; the stack's own steps never read it)."""
        self.nets[k].load_state_dict({n: t[k] for n, t in (self.params | self.buffers).items()})
        torch.set_rng_state(self.generators[k].get_state())
        return self.nets[k]

    def rng_state(self, k: int) -> torch.Tensor:
        """Member k's RNG, in the place of the global RNG a run alone would checkpoint."""
        return self.generators[k].get_state()

    def optimizer_state(self, k: int) -> dict:
        """Member k's optimiser as `torch.optim.SGD.state_dict()` would give it, for a checkpoint."""
        net = self.member(k)
        opt = torch.optim.SGD(net.parameters(), lr=self.hyper["lr"][k].item(),
                              momentum=self.hyper["momentum"][k].item(),
                              weight_decay=self.hyper["weight_decay"][k].item())
        if opt.param_groups[0]["momentum"]:
            for (name, _), p in zip(net.named_parameters(), net.parameters(), strict=True):
                opt.state[p]["momentum_buffer"] = self.momentum_buffers[name][k].clone()
        return opt.state_dict()
