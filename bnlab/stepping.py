"""Stepping: what the trainer asks of a model that takes one training step of one run or of a stack of runs
(`Stepper`), the model of one run (`SingleModel`; the stack's is `stack.StackedMLP`), the training losses and
evaluation in eval mode."""

from typing import Protocol, cast

import torch
import torch.nn.functional as F

from bnlab.models import Block, Net, chosen_layer, layer_parameters
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


def moment_penalty(inputs: list[torch.Tensor]) -> torch.Tensor | float:
    """Summed over layers, the mean over units of (batch mean)^2 + (batch variance - 1)^2: zero exactly when every
    unit's input is standardised over the batch, as BN would make it."""
    total: torch.Tensor | float = 0.0
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

    def drop_diverged(self, diverged: list[int]) -> None:
        """Drop the listed members (ones that diverged); the others keep training, renumbered in order."""
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


class SingleModel(Stepper):
    """One run's own nn.Module and torch.optim.SGD: every architecture, normaliser and probe."""

    def __init__(self, net: Net, opt: torch.optim.SGD, train_x: torch.Tensor, train_y: torch.Tensor, loss: str,
                 tracker: MomentTracker | None, moment_penalty: float = 0.0, block: str = "all", step: int = 0):
        self.net, self.opt, self.train_x, self.train_y = net, opt, train_x, train_y
        # block-coordinate SGD (optim.block): each step moves one layer; `step` counts steps taken (a resumed run's)
        self.block, self.steps_taken, self.layers = block, step, layer_parameters(net)
        self.loss, self.classify, self.tracker = LOSSES[loss], loss == "cross_entropy", tracker
        self.loss_name = loss
        self.moment_penalty = moment_penalty
        self.inputs: list[torch.Tensor] = []  # the nonlinearities' inputs of this step
        if moment_penalty:
            for b in net.blocks:  # an nn.ModuleList: its items are typed as plain Modules
                cast(Block, b).norm.register_forward_hook(lambda module, args, out: self.inputs.append(out))

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

    def drop_diverged(self, diverged: list[int]) -> None:
        pass  # one member: when it diverges, training ends

    def member(self, k: int) -> Net:
        return self.net

    def rng_state(self, k: int) -> torch.Tensor:
        return torch.get_rng_state()  # dropout and noise draw from the global RNG

    def optimizer_state(self, k: int) -> dict:
        return self.opt.state_dict()
