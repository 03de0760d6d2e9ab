"""The record of one run as it trains: its counters (`RunState`), its time (`Clock`), what it logs and its
checkpoint (`Member`), its summary or failure in its run directory; and what every run is evaluated on (`EvalData`).
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

import torch
from omegaconf import DictConfig

from bnlab.config import TrainerConfig, run_identity
from bnlab.data import BatchOrder, Dataset
from bnlab.models import Net
from bnlab.probes import MomentTracker, activation_stats, internal_covariate_shift, jacobian_spectra, landscape
from bnlab.runlog import (
    ACTIVATIONS,
    METRICS,
    MODEL,
    PROBES,
    RunDir,
    WandbMirror,
    atomic_torch_save,
    environment,
    read_jsonl,
)
from bnlab.runtime import with_resolved_device
from bnlab.stepping import LOSSES, Stepper


def due(step: int, every: int) -> bool:
    """Is something done every `every` steps (0: never) due at this step?"""
    return bool(every) and step % every == 0


@dataclass
class RunState:
    """A run's counters from step to step, the checkpoint's 'state'. Training loss and accuracy are averaged over
    each evaluation interval; `initial_loss` anchors divergence; `probe_time` is what evaluation, probes and
    checkpoints cost on top of training (`train_time`)."""

    step: int = 0
    initial_loss: float | None = None
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_time: float = 0.0
    probe_time: float = 0.0

    def record(self, step: int, loss: float, correct: int | None, batch_size: int) -> None:
        """One training step of this run."""
        self.step = step
        if self.initial_loss is None:
            self.initial_loss = loss
        self.loss_sum += loss * batch_size
        if correct is not None:
            self.correct += correct
        self.seen += batch_size

    def diverged(self, loss: float, trainer: TrainerConfig) -> bool:
        """Has the run diverged with this step's loss: a non-finite loss, or at an evaluation an interval's mean loss
        above diverge_factor x the first step's?"""
        assert self.initial_loss is not None, "diverged() follows record()"
        interval_loss = self.loss_sum / self.seen
        return not math.isfinite(loss) or (due(self.step, trainer.eval_every) and
                                           interval_loss > trainer.diverge_factor * self.initial_loss)

    def take_interval(self, classify: bool) -> tuple[float | None, float | None]:
        """The interval's mean training loss and accuracy, and a fresh interval."""
        seen = max(self.seen, 1)
        means = (self.loss_sum / seen if self.seen else None,
                 self.correct / seen if self.seen and classify else None)
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        return means


class Clock:
    """Wall time split into training, shared out over the runs training together, and each run's probe time."""

    def __init__(self) -> None:
        self.tick = time.perf_counter()

    @contextlib.contextmanager
    def paused(self, members: list["Member"]) -> Iterator[None]:
        """Charge the training since the last tick to `members`; what runs inside is not training."""
        now = time.perf_counter()
        for m in members:
            m.state.train_time += (now - self.tick) / len(members)
        try:
            yield
        finally:
            self.tick = time.perf_counter()

    @staticmethod
    @contextlib.contextmanager
    def probing(members: list["Member"]) -> Iterator[None]:
        """Charge what runs inside to `members`' probe time, shared out equally (a stack evaluates them at once)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            share = (time.perf_counter() - start) / len(members)
            for m in members:
                m.state.probe_time += share


@dataclass
class EvalData:
    """What every run of a process is evaluated and probed on, and the trainer settings that say how: the same
    test set, probe batch and training subset for every run and seed, so that traces compare."""

    trainer: TrainerConfig  # resolved once: a DictConfig read costs microseconds, far more at batch 2
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    probe_x: torch.Tensor
    train_eval: torch.Tensor
    test_subset: torch.Tensor | None = None  # trainer.eval_subset's fixed test examples

    @classmethod
    def on(cls, data: Dataset, trainer: TrainerConfig, device: torch.device) -> "EvalData":
        train_x, train_y = data.train.x.to(device), data.train.y.to(device)
        fixed = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(12345))
        subset = torch.randperm(len(data.test.x), generator=torch.Generator().manual_seed(54321))[:trainer.eval_subset]
        return cls(trainer, train_x, train_y, data.test.x.to(device), data.test.y.to(device),
                   train_x[fixed[:trainer.probe_size]], fixed[:trainer.train_eval_size],
                   subset.to(device) if trainer.eval_subset else None)

    def test_set(self, whole: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples an evaluation scores: the whole test set, or trainer.eval_subset's fixed part of it."""
        if whole or self.test_subset is None:
            return self.test_x, self.test_y
        return self.test_x[self.test_subset], self.test_y[self.test_subset]


@dataclass
class Member:
    """One run of a training process: its directory, batch order, counters, fate, and what it logs."""

    cfg: DictConfig
    run: RunDir
    identity: str
    order: BatchOrder | None = None
    state: RunState = field(default_factory=RunState)
    checkpoint: dict | None = None
    tracker: MomentTracker | None = None  # Santurkar Fig. 8's per-step moment changes (trainer.moment_units)
    mirror: WandbMirror | None = None
    status: str = "finished"
    diverged_at: int | None = None

    def prepare(self) -> None:
        """Its run directory ready and its checkpoint loaded, unless the checkpoint is another config's: then the
        directory's earlier contents are set aside and the run starts afresh."""
        path = self.run.checkpoint_path
        ck = torch.load(path, weights_only=False) if path.exists() else None
        moved = self.run.set_aside_if_superseded(self.identity, ck["identity"] if ck else None)
        if moved:
            print(f"[bnlab] {self.run.path}: trained under another config; set aside in {moved}", flush=True)
        self.run.prepare(self.cfg)
        self.checkpoint = ck if ck is not None and ck["identity"] == self.identity else None

    def next_batch(self) -> torch.Tensor:
        """The indices of this run's next training batch."""
        assert self.order is not None, "build_stepper gives every member its batch order"
        return self.order.next()

    @property
    def start_step(self) -> int:
        return self.checkpoint["state"]["step"] if self.checkpoint else 0

    def restore(self, net: Net, opt: torch.optim.SGD, device: torch.device) -> None:
        """Network, optimiser, batch order, RNGs, counters and moment tracker as its checkpoint holds them."""
        ck = self.checkpoint
        assert ck is not None and self.order is not None
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        self.order.load_state_dict(ck["order"])
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and device.type == "cuda":  # dropout on a GPU draws from CUDA's RNG
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        self.state = RunState(**ck["state"])
        if self.tracker:
            self.tracker.load_state_dict(ck["tracker"])

    def log_eval(self, step: int, test: tuple, train_eval: tuple | None, data: EvalData, norms: dict,
                 test_examples: int) -> None:
        """One row of metrics: the (loss, accuracy) `Stepper.evaluate` gave on the test set (and the training
        subset), the interval's training means, the moment tracker's changes, the parameter norms."""
        assert self.mirror is not None
        train_loss, train_acc = self.state.take_interval(data.trainer.loss == "cross_entropy")
        row = {"step": step, "test_loss": test[0], "test_acc": test[1], "train_loss": train_loss,
               "train_acc": train_acc, "train_time": self.state.train_time}
        if data.trainer.eval_subset:
            row["test_examples"] = test_examples
        if self.tracker:
            row.update({f"{key}_L{r['layer']}": r[key] for r in self.tracker.rows() for key in ("dmean", "dvar")})
        if train_eval:
            row["train_eval_loss"], row["train_eval_acc"] = train_eval
        row.update(norms)
        self.run.append_rows(METRICS, [row])
        self.mirror.log_metrics(row)

    def log_activations(self, net: Net, step: int, data: EvalData) -> None:
        assert self.mirror is not None
        trainer = data.trainer
        rows = [{"step": step, **r} for r in activation_stats(net, data.probe_x, trainer.probe_units,
                                                              trainer.hist_bins, trainer.hist_range)]
        if trainer.jacobian_examples:  # layer l's row gets the Jacobian of its inputs by layer l - 1's
            for r in jacobian_spectra(net, data.probe_x, trainer.jacobian_examples):
                rows[r.pop("layer")].update(r)
        self.run.append_rows(ACTIVATIONS, rows)
        self.mirror.log_activations(rows, step)

    def log_gradient_probes(self, net: Net, step: int, idx: torch.Tensor, data: EvalData, with_ics: bool,
                            with_landscape: bool) -> None:
        """ICS and the landscape on this run's batch of this step, before its update."""
        trainer, lr, loss_fn = data.trainer, self.cfg.optim.lr, LOSSES[data.trainer.loss]
        x, y = data.train_x.index_select(0, idx), data.train_y.index_select(0, idx)
        rows = internal_covariate_shift(net, x, y, loss_fn, lr, trainer.ics_layers, self.cfg.optim.block,
                                        step) if with_ics else []
        if with_landscape:
            rows += landscape(net, x, y, loss_fn, lr, trainer.landscape_steps,
                              seed=self.cfg.seed * 1_000_003 + step)  # random direction: own generator
        self.run.append_rows(PROBES, [{"step": step, **r} for r in rows])

    def save_checkpoint(self, model: Stepper, k: int, device: torch.device) -> None:
        """Member k of `model` as this run's checkpoint: what `restore` reads to go on bitwise as if uninterrupted."""
        assert self.order is not None
        atomic_torch_save({
            "identity": self.identity, "model": model.member(k).state_dict(), "opt": model.optimizer_state(k),
            "order": self.order.state_dict(), "rng": model.rng_state(k), "state": dataclasses.asdict(self.state),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "tracker": self.tracker.state_dict() if self.tracker else None}, self.run.checkpoint_path)

    def save_model(self, net: Net) -> None:
        atomic_torch_save(net.state_dict(), self.run.path / MODEL)

    def finish(self, stack_size: int, device: torch.device) -> None:
        """The summary, into the run directory and wandb; the checkpoint goes."""
        assert self.mirror is not None
        metrics = read_jsonl(self.run.path / METRICS)
        finite = [r["test_acc"] for r in metrics if r["test_acc"] is not None and math.isfinite(r["test_loss"])]
        state = self.state
        summary = {
            "status": self.status, "identity": self.identity, "experiment": self.cfg.experiment,
            "seed": self.cfg.seed, "steps": state.step, "diverged_at": self.diverged_at,
            "resumed": self.checkpoint is not None,
            "final_test_acc": metrics[-1]["test_acc"] if self.status == "finished" else None,
            "best_test_acc": max(finite) if finite else None,
            "final_train_loss": metrics[-1]["train_loss"],
            "train_time_s": state.train_time,  # in a stack: the stack's time shared out over its members
            "probe_time_s": state.probe_time,  # evaluation, activation probes, checkpoints
            "steps_per_s": state.step / state.train_time if state.train_time else None,
            "stack_size": stack_size,  # runs trained together as one stack (1: alone)
            "device": device.type,
            **environment(),
        }
        self.mirror.close(summary=summary)
        self.run.write_summary(summary)
        self.run.checkpoint_path.unlink(missing_ok=True)


def trim_logs(run: RunDir, last: int | None) -> None:
    """Rows logged after the checkpoint (step `last`; None: no checkpoint) are recomputed. Probes of the training
    batch are logged before that step's update, so the checkpoint's own step is measured again."""
    keep = {METRICS: lambda r: r["step"] <= last, ACTIVATIONS: lambda r: r["step"] <= last,
            PROBES: lambda r: r["step"] < last}
    for name, ok in keep.items():
        run.write_rows(name, [r for r in read_jsonl(run.path / name) if ok(r)] if last is not None else [])


def open_mirrors(members: list[Member], closing: contextlib.ExitStack) -> None:
    """Each member's wandb mirror, opened after `trim_logs` (it replays the logs); closed as failed (exit code 1)
    when what `closing` holds raises, and by `Member.finish` when the run ends."""

    def close_failed(exc_type: type[BaseException] | None, exc: BaseException | None,
                     tb: TracebackType | None) -> None:
        if exc_type is not None:
            for m in members:
                if m.mirror:
                    m.mirror.close(exit_code=1)

    closing.push(close_failed)
    for m in members:
        m.mirror = WandbMirror(m.cfg, m.run.path, m.identity)


def record_failure(cfg: DictConfig, out_dir: str, text: str) -> None:
    """A failed run's traceback and summary, into its directory if Hydra made one."""
    run = RunDir(out_dir)
    if run.path.is_dir():
        run.write_error(text)
        run.write_summary({"status": "failed", "identity": run_identity(with_resolved_device(cfg)),
                           "experiment": cfg.experiment, "seed": cfg.seed, "error": text.strip().splitlines()[-1],
                           **environment()})
