"""The stepping models: what takes one training step of one run (`SingleModel`) or of a stack of K runs
(`StackedMLP`), behind one interface (`Stepper`), and which runs may share a stack (`stack_key`).

A small MLP step is mostly per-operation overhead, so K models whose weights are stacked into K x out x in
tensors and multiplied with one `bmm` cost far less than K separate steps. The runs of a stack differ only in
seed, optimiser, init and dropout rate; each keeps its own initialisation (built by the ordinary `build_model`
under its own seed), data order, learning rate, momentum, weight decay, dropout masks and BN running statistics;
`member(k)` hands out member k as an ordinary `Net`, so probes and checkpoints are the single-run code;
evaluation scores every member in one eval-mode pass (`StackedMLP.evaluate`). Members match the same run
trained alone to float rounding.

Only MLPs are stacked, with a normaliser that `StackedMLP.normalise` knows (`STACKABLE_NORMS`: a new one trains
alone until it is added there), no moment penalty and plain SGD (optim.block=all); every other run, and one that
asks to (trainer.alone), trains alone. A run alone draws
its dropout masks and noise from the global RNG, which nothing else in its training step touches; a member draws
them from its own generator, started in the same state and drawn in the same order, so its masks and noise are
those of its run alone. Each member's moment tracker is fed the batch moments the stack computes, where a run
alone's tracker hooks its forward. Probes that move the weights (ICS, landscape) work on member k's copy.
Activations are kept as K x features x batch so that BN over all K x width units is one `F.batch_norm` call
on a free view (1, K*width, batch). At a small batch (`SMALL_BATCH`) a step is mostly passes over the members'
weights: there the activations are batch-major in memory (the same shape, transposed strides), the products x^T W^T,
and with plain SGD `fused_step` updates each weight in place.
"""

import hashlib
import json
from typing import Protocol

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.func import stack_module_state

from bnlab.config import flatten, role
from bnlab.models import Net, chosen_layer, layer_parameters, resolve_device
from bnlab.norms import AlgOneNoise, BatchRenorm, LpNorm, lp_normalise, renormalise
from bnlab.probes import MomentTracker

# The training losses, each averaged (or summed) over a batch.
LOSSES = {
    "cross_entropy": lambda out, y: F.cross_entropy(out, y),
    "mse": lambda out, y: F.mse_loss(out, y),
    "mse_sum": lambda out, y: F.mse_loss(out, y, reduction="sum"),  # Santurkar's DLN: lr 1e-6 implies a sum
}


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[float, float | None]:
    """Loss and accuracy in eval mode (running statistics), the way a deployed model is scored.

    Cross-entropy and `mse` are averaged; `mse_sum` is summed over the whole set, as it is trained."""
    # A CNN's activations for 1,000 images overflow the cache: a 10k CIFAR pass takes 3.6 s in chunks of 1,000
    # and 1.7 s in chunks of 256 (one thread, measured); MLP chunks of 256-1,000 cost the same.
    chunk = 256 if model.conv else 1000
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        if loss == "cross_entropy":
            total += F.cross_entropy(out, y[i:i + chunk], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + chunk]).sum().item()
        else:
            total += F.mse_loss(out, y[i:i + chunk], reduction="sum").item()
    model.train(was_training)
    if loss == "cross_entropy":
        return total / len(x), correct / len(x)
    return (total if loss == "mse_sum" else total / y.numel()), None


def moment_penalty(inputs: list[torch.Tensor]) -> torch.Tensor:
    """Summed over layers, the mean over units of (batch mean)^2 + (batch variance - 1)^2: zero exactly when every
    unit's input is standardised over the batch, as BN would make it."""
    total = 0.0
    for a in inputs:
        a = a.transpose(0, 1).flatten(1)  # units x values (a conv layer's positions count as examples)
        total = total + (a.mean(1).pow(2) + (a.var(1, unbiased=False) - 1).pow(2)).mean()
    return total


class Stepper(Protocol):
    """What the trainer asks of a model that trains one run or a stack of them; member k is run k."""

    def step(self, idx: torch.Tensor) -> tuple[list[float], list[int] | None]:
        """One SGD step of every member on its batch (idx: members x batch): losses, and correct counts."""
        ...

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, members: list[int]) -> list[tuple[float, float | None]]:
        """Loss and accuracy of the listed members in eval mode (running statistics) on (x, y), as `evaluate`."""
        ...

    def keep(self, members: list[int]) -> None:
        """Drop every member not listed (one that diverged)."""
        ...

    def member(self, k: int) -> Net:
        """Member k as an ordinary Net, its weights as they are now, for evaluation, probes, checkpoints."""
        ...

    def rng_state(self, k: int) -> torch.Tensor:
        """The RNG member k's dropout and noise draw from, as a run alone would checkpoint it."""
        ...

    def optimizer_state(self, k: int) -> dict:
        """Member k's optimiser as `torch.optim.SGD.state_dict()` gives it."""
        ...


class SingleModel:
    """One run's own nn.Module and torch.optim.SGD: every architecture, normaliser and probe."""

    def __init__(self, net: Net, opt: torch.optim.SGD, train_x: torch.Tensor, train_y: torch.Tensor, loss: str,
                 tracker: MomentTracker | None, moment_penalty: float = 0.0, block: str = "all", step: int = 0):
        self.net, self.opt, self.train_x, self.train_y = net, opt, train_x, train_y
        # block-coordinate SGD (optim.block): each step moves one layer; `step` counts steps taken (a resumed run's)
        self.block, self.steps_taken, self.layers = block, step, layer_parameters(net)
        self.loss, self.classify, self.tracker = LOSSES[loss], loss == "cross_entropy", tracker
        self.loss_name = loss
        self.moment_penalty, self.inputs = moment_penalty, []  # the nonlinearities' inputs of this step
        if moment_penalty:
            for block in net.blocks:
                block.norm.register_forward_hook(lambda module, args, out: self.inputs.append(out))

    def step(self, idx: torch.Tensor) -> tuple[list[float], list[int] | None]:
        x, y = self.train_x.index_select(0, idx[0]), self.train_y.index_select(0, idx[0])
        if self.tracker:
            self.tracker.active = True
        self.inputs.clear()  # probes run the network too
        out = self.net(x)
        if self.tracker:
            self.tracker.active = False
        loss = self.loss(out, y)
        self.opt.zero_grad(set_to_none=True)
        objective = loss + self.moment_penalty * moment_penalty(self.inputs) if self.moment_penalty else loss
        objective.backward()
        if self.block != "all":  # SGD skips a parameter without a gradient (validate refuses momentum, decay)
            chosen = chosen_layer(self.block, self.steps_taken, [[p.grad for p in ps] for ps in self.layers])
            for i, ps in enumerate(self.layers):
                if i != chosen:
                    for p in ps:
                        p.grad = None
        self.opt.step()
        self.steps_taken += 1
        return [loss.item()], [(out.argmax(1) == y).sum().item()] if self.classify else None  # the data loss

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, members: list[int]) -> list[tuple[float, float | None]]:
        return [evaluate(self.net, x, y, self.loss_name)]

    def keep(self, members: list[int]) -> None:
        pass  # one member: when it diverges, training ends

    def member(self, k: int) -> Net:
        return self.net

    def rng_state(self, k: int) -> torch.Tensor:
        return torch.get_rng_state()  # dropout and noise draw from the global RNG

    def optimizer_state(self, k: int) -> dict:
        return self.opt.state_dict()



STACKABLE_NORMS = ("none", "batch", "lp1", "lp2", "lpinf", "noisy_batch", "noisy_none", "layer", "group",
                   "batch_renorm")


def stack_key(cfg: DictConfig) -> str | None:
    """Runs with equal keys can train as one stack; None: this run must train alone."""
    m = cfg.model
    if (m.arch != "mlp" or cfg.norm.name not in STACKABLE_NORMS
            or resolve_device(cfg.device) != "cpu"  # masks drawn on the CPU
            or cfg.wandb.mode != "disabled" or cfg.trainer.moment_penalty
            or cfg.optim.block != "all" or cfg.trainer.alone):
        return None
    values = flatten(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    shared = {k: v for k, v in values.items() if role(k) in (None, "source")}  # config.KEY_ROLES
    return hashlib.sha1(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


EVAL_CHUNK = 1000  # images per stacked forward in eval mode
# Up to this batch a stacked step multiplies as x^T W^T and updates the weights in place (`StackedMLP.fused_step`):
# there a step is mostly passes over the members' weights. Above it W x and the autograd update are faster.
SMALL_BATCH = 8

# Per-member losses of K x batch x outputs, reduced as `LOSSES` reduces one model's.
STACKED_LOSSES = {
    "cross_entropy": lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    .view(y.shape).mean(1),
    "mse": lambda out, y: (out - y).pow(2).flatten(1).mean(1),
    "mse_sum": lambda out, y: (out - y).pow(2).flatten(1).sum(1),
}


def _affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """Each member's gamma and beta (K x units) on K x units x batch; as the modules apply them after normalising."""
    return x if weight is None else x * weight.unsqueeze(2) + bias.unsqueeze(2)


def _per_example(norm: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor | None,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm or GroupNorm (statistics per example, over its (groups of) units) on K x units x batch, each
    example's units laid out as a run alone lays them out; the same in training and eval mode."""
    k, c, n = x.shape
    rows = x.transpose(1, 2).reshape(k * n, c)
    rows = F.layer_norm(rows, (c,), eps=norm.eps) if isinstance(norm, torch.nn.LayerNorm) \
        else F.group_norm(rows, norm.num_groups, eps=norm.eps)
    y = rows.view(k, n, c).transpose(1, 2)
    return _affine(y if n <= SMALL_BATCH else y.contiguous(), weight, bias)  # as `StackedMLP.linear` lays it out


def _normalise_eval(norm: torch.nn.Module, name: str, x: torch.Tensor, p: dict, b: dict) -> torch.Tensor:
    """What `norm` does in eval mode (running statistics, no noise), member by member; x: K x units x batch."""
    weight, bias = p.get(f"{name}.weight"), p.get(f"{name}.bias")
    stat = lambda buf: b[f"{name}.{buf}"].unsqueeze(2)  # noqa: E731  (K x units -> K x units x 1)
    if isinstance(norm, torch.nn.BatchNorm1d):
        k, c, n = x.shape
        return F.batch_norm(x.view(1, k * c, n), b[f"{name}.running_mean"].view(-1),
                            b[f"{name}.running_var"].view(-1), None if weight is None else weight.view(-1),
                            None if bias is None else bias.view(-1), training=False, eps=norm.eps).view(k, c, n)
    if isinstance(norm, LpNorm):
        return _affine((x - stat("running_mean")) / (stat("running_scale") + norm.eps), weight, bias)
    if isinstance(norm, BatchRenorm):
        return _affine((x - stat("running_mean")) / (stat("running_var") + norm.eps).sqrt(), weight, bias)
    if isinstance(norm, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
        return _per_example(norm, x, weight, bias)
    assert isinstance(norm, (AlgOneNoise, torch.nn.Identity)), f"{type(norm).__name__} cannot be stacked"
    return x  # the noise is off in eval mode


def _momentum_buffer(opt: torch.optim.SGD, param: torch.Tensor) -> torch.Tensor:
    buf = opt.state.get(param, {}).get("momentum_buffer")
    return torch.zeros_like(param) if buf is None else buf


class StackedMLP:
    """K `Net` MLPs and their `torch.optim.SGD`s as one stacked model with a hand-written stacked SGD step."""

    def __init__(self, nets: list[Net], opts: list[torch.optim.SGD], rng_states: list[torch.Tensor],
                 train_x: torch.Tensor, train_y: torch.Tensor, loss: str, trackers: list[MomentTracker] | None = None):
        self.nets = nets  # member k's own Net (its own dropout rate), loaded with its weights when asked for
        self.blocks = [(b.norm, b.act) for b in nets[0].blocks]  # with norm.last_layers, Identity below them
        self.residual = [b.residual for b in nets[0].blocks]  # model.residual: a block adds its input
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
        graph (`fused_step`)."""
        for i, (norm, act) in enumerate(self.blocks):
            h = self.linear(f"blocks.{i}.linear", x, taps)
            parts = list(norm) if isinstance(norm, torch.nn.Sequential) else [norm]  # noisy BN: BN, then noise
            for j, part in enumerate(parts):
                h = self.normalise(part, f"blocks.{i}.norm" + (f".{j}" if len(parts) > 1 else ""), h)
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
        w = w.detach() if taps is not None else w  # `fused_step` applies this weight's gradient itself
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

    def normalise(self, norm: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        """What `norm` (a run alone's module, named `name` in its Net) does in training mode, member by member;
        x: K x units x batch."""
        p, b = self.params, self.buffers
        weight, bias = p.get(f"{name}.weight"), p.get(f"{name}.bias")
        if isinstance(norm, torch.nn.BatchNorm1d):
            k, c, n = x.shape
            x = F.batch_norm(x.reshape(1, k * c, n), b[f"{name}.running_mean"].view(-1),  # a copy at a small batch
                             b[f"{name}.running_var"].view(-1), None if weight is None else weight.view(-1),
                             None if bias is None else bias.view(-1), training=True, momentum=norm.momentum,
                             eps=norm.eps).view(k, c, n)
            b[f"{name}.num_batches_tracked"] += 1
            return x
        if isinstance(norm, LpNorm):  # LpNorm's own training step, over each member's batch (dim 2)
            return _affine(lp_normalise(x, 2, norm.p, norm.eps, b[f"{name}.running_mean"],
                                        b[f"{name}.running_scale"], norm.momentum), weight, bias)
        if isinstance(norm, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            return _per_example(norm, x, weight, bias)
        if isinstance(norm, BatchRenorm):  # BatchRenorm's own training step, over each member's batch (dim 2)
            y = renormalise(norm, x, 2, *(b[f"{name}.{buf}"] for buf in ("running_mean", "running_var", "steps")))
            return _affine(y, weight, bias)
        if isinstance(norm, AlgOneNoise):  # each member's noise from its own generator, as its run alone draws it
            k, c, n = x.shape
            draws = [norm.sample(n, c, g)[2:] for g in self.generators]
            m, s = (torch.stack([d[i] for d in draws]).transpose(1, 2).contiguous() for i in (0, 1))
            return s * x + m
        assert isinstance(norm, torch.nn.Identity), f"{type(norm).__name__} cannot be stacked"
        return x

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, members: list[int]) -> list[tuple[float, float | None]]:
        """Loss and accuracy of each listed member in eval mode on one set, as `evaluate` scores it alone.

        The set is the same for every member, so the first layer is one GEMM over every member's weights side by
        side: far fewer, larger products than a `bmm` over K copies of the set."""
        index = torch.tensor(members)
        p = {n: t.detach()[index] for n, t in self.params.items()}
        b = {n: t[index] for n, t in self.buffers.items()}
        k, total, correct = len(members), torch.zeros(len(members), dtype=torch.float64), 0
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
        for i, (norm, act) in enumerate(self.blocks):
            w, bias = p[f"blocks.{i}.linear.weight"], p.get(f"blocks.{i}.linear.bias")
            if i == 0:  # one GEMM, (K*width) x batch, laid out as K x width x batch: the layout bmm and the norms take
                k, width, inputs = w.shape
                h = torch.mm(w.view(k * width, inputs), x.t()) if bias is None else \
                    torch.addmm(bias.view(-1, 1), w.view(k * width, inputs), x.t())
                h = h.view(k, width, -1)
            else:
                h = torch.bmm(w, a) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, a)
            parts = list(norm) if isinstance(norm, torch.nn.Sequential) else [norm]
            for j, part in enumerate(parts):
                h = _normalise_eval(part, f"blocks.{i}.norm" + (f".{j}" if len(parts) > 1 else ""), h, p, b)
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
            return self.fused_step(x, y)
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

    def fused_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[int] | None]:
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

    def keep(self, members: list[int]) -> None:
        """Drop every member not listed (a diverged one), so its NaNs never meet the others' numbers."""
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
