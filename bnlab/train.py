"""The one trainer. Every experiment in bnlab is a config for it plus an analysis of what it writes.

  python -m bnlab.train data=mnist model.activation=sigmoid norm=batch optim.lr=0.5 seed=1
  python -m bnlab.train -m norm=none,batch optim.lr=0.1,0.5 'seed=range(3)'
  python -m bnlab.train experiment=fig1              # an experiment config is a whole sweep
"""

import contextlib
import ctypes
import dataclasses
import itertools
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnlab.config import CONFIG_DIR, ConfigError, run_identity
from bnlab.data import EXPECTED_FILES, BatchOrder, DataError, Dataset, ensure_files, load
from bnlab.models import Net, init_model, use_device, with_resolved_device
from bnlab.probes import (
    MomentTracker,
    activation_stats,
    internal_covariate_shift,
    jacobian_spectra,
    landscape,
    parameter_norms,
)
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
from bnlab.stack import LOSSES, SingleModel, StackedMLP, Stepper, stack_key
from bnlab.validate import check_keys, command_line_keys, validate


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

    def record(self, step: int, loss: float, correct: int | None, tc) -> bool:
        """One training step of this run; True when it has diverged (a non-finite loss, or an interval's mean
        loss above diverge_factor x the first step's)."""
        self.step = step
        if self.initial_loss is None:
            self.initial_loss = loss
        self.loss_sum += loss * tc.batch_size
        if correct is not None:
            self.correct += correct
        self.seen += tc.batch_size
        interval_loss = self.loss_sum / self.seen
        return not math.isfinite(loss) or (due(step, tc.eval_every) and
                                           interval_loss > tc.diverge_factor * self.initial_loss)

    def take_interval(self, classify: bool) -> tuple[float | None, float | None]:
        """The interval's mean training loss and accuracy, and a fresh interval."""
        seen = max(self.seen, 1)
        means = (self.loss_sum / seen if self.seen else None,
                 self.correct / seen if self.seen and classify else None)
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        return means


class Clock:
    """Wall time split into training, shared out over the runs training together, and each run's probe time."""

    def __init__(self):
        self.tick = time.perf_counter()

    @contextlib.contextmanager
    def paused(self, members: list["Member"]):
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
    def probing(members: list["Member"]):
        """Charge what runs inside to `members`' probe time, shared out equally (a stack evaluates them at once)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            share = (time.perf_counter() - start) / len(members)
            for m in members:
                m.state.probe_time += share


@dataclass
class Scoring:
    """What every run of a process is scored and probed on: the same test set, probe batch and training subset
    for every run and seed, so that traces compare."""

    tc: object  # the trainer settings, resolved once: a DictConfig read costs microseconds, far more at batch 2
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    probe_x: torch.Tensor
    train_eval: torch.Tensor
    test_subset: torch.Tensor | None = None  # trainer.eval_subset's fixed test examples

    @classmethod
    def on(cls, data: Dataset, tc, device: torch.device) -> "Scoring":
        train_x, train_y = data.train.x.to(device), data.train.y.to(device)
        fixed = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(12345))
        subset = torch.randperm(len(data.test.x), generator=torch.Generator().manual_seed(54321))[:tc.eval_subset]
        return cls(tc, train_x, train_y, data.test.x.to(device), data.test.y.to(device),
                   train_x[fixed[:tc.probe_size]], fixed[:tc.train_eval_size],
                   subset.to(device) if tc.eval_subset else None)

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
    rng: torch.Tensor | None = None  # the global RNG after initialisation, where dropout and noise draws start
    tracker: MomentTracker | None = None  # Santurkar Fig. 8's per-step moment changes (trainer.moment_units)
    mirror: WandbMirror | None = None
    status: str = "finished"
    diverged_at: int | None = None

    def log_eval(self, step: int, test: tuple, train_eval: tuple | None, sc: Scoring, norms: dict,
                 test_examples: int) -> None:
        """One row of metrics: the (loss, accuracy) `Stepper.evaluate` gave on the test set (and the training
        subset), the interval's training means, the moment tracker's changes, the parameter norms."""
        train_loss, train_acc = self.state.take_interval(sc.tc.loss == "cross_entropy")
        row = {"step": step, "test_loss": test[0], "test_acc": test[1], "train_loss": train_loss,
               "train_acc": train_acc, "train_time": self.state.train_time}
        if sc.tc.eval_subset:
            row["test_examples"] = test_examples
        if self.tracker:
            row.update({f"{key}_L{r['layer']}": r[key] for r in self.tracker.rows() for key in ("dmean", "dvar")})
        if train_eval:
            row["train_eval_loss"], row["train_eval_acc"] = train_eval
        row.update(norms)
        self.run.append_rows(METRICS, [row])
        self.mirror.log_metrics(row)

    def log_activations(self, net: Net, step: int, sc: Scoring) -> None:
        tc = sc.tc
        rows = [{"step": step, **r} for r in activation_stats(net, sc.probe_x, tc.probe_units, tc.hist_bins,
                                                              tc.hist_range)]
        if tc.jacobian_examples:  # layer l's row gets the Jacobian of its inputs by layer l - 1's
            for r in jacobian_spectra(net, sc.probe_x, tc.jacobian_examples):
                rows[r.pop("layer")].update(r)
        self.run.append_rows(ACTIVATIONS, rows)
        self.mirror.log_activations(rows, step)

    def log_gradient_probes(self, net: Net, step: int, idx: torch.Tensor, sc: Scoring, with_ics: bool,
                            with_landscape: bool) -> None:
        """ICS and the landscape on this run's batch of this step, before its update."""
        tc, lr, loss_fn = sc.tc, self.cfg.optim.lr, LOSSES[sc.tc.loss]
        x, y = sc.train_x.index_select(0, idx), sc.train_y.index_select(0, idx)
        rows = internal_covariate_shift(net, x, y, loss_fn, lr, tc.ics_layers, self.cfg.optim.block,
                                        step) if with_ics else []
        if with_landscape:
            rows += landscape(net, x, y, loss_fn, lr, tc.landscape_steps,
                              seed=self.cfg.seed * 1_000_003 + step)  # random direction: own generator
        self.run.append_rows(PROBES, [{"step": step, **r} for r in rows])

    def save_checkpoint(self, model: Stepper, k: int, device: torch.device) -> None:
        atomic_torch_save({
            "identity": self.identity, "model": model.member(k).state_dict(), "opt": model.optimizer_state(k),
            "order": self.order.state_dict(), "rng": model.rng_state(k), "state": dataclasses.asdict(self.state),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "tracker": self.tracker.state_dict() if self.tracker else None}, self.run.checkpoint_path)

    def finish(self, stack_size: int, device: torch.device) -> None:
        """The summary, into the run directory and wandb; the checkpoint goes."""
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


def train(cfg: DictConfig, out_dir: str) -> dict:
    """Train one run into out_dir and return its summary. Resumes from a checkpoint; skips a finished run."""
    return train_runs([cfg], [out_dir])[0]


def keep_freed_memory() -> None:
    """Have glibc keep the memory of freed tensors mapped, so that the next step reuses it without page faults.

    With its defaults glibc maps a tensor of a few megabytes afresh (or trims the heap when freeing leaves enough at
    its top), so a step's activations can fault all their pages in again each step: 1,000-2,800 faults a CNN step
    in a plain training loop, 17-30% of its time. Whether the trainer hit this depends on what the process allocated
    before (glibc's threshold adapts); MNIST CNN runs' evaluation was where it did (docs/speed.md). Numbers are
    unchanged: same kernels, same 64-byte-aligned buffers (a whole reproduction logged bitwise the same numbers)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): its allocator is left as it is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest; bigger tensors (the datasets) are still mmapped
    libc.mallopt(m_trim_threshold, 1 << 30)  # a freed heap top is returned only past 1 GiB


def train_runs(cfgs: list[DictConfig], out_dirs: list[str]) -> list[dict]:
    """Train runs that may share a stack (equal `stack.stack_key`; any single run does) in this process.

    Each run is resumed from its checkpoint or skipped when finished, exactly as if it trained alone."""
    for cfg in cfgs:
        validate(cfg)
    cfgs = [with_resolved_device(cfg) for cfg in cfgs]
    members = [Member(cfg, RunDir(d), run_identity(cfg)) for cfg, d in zip(cfgs, out_dirs, strict=True)]
    pending = [m for m in members if not m.run.is_done(m.identity)]
    if len(pending) > 1:
        keys = {stack_key(m.cfg) for m in pending}
        if None in keys or len(keys) > 1:
            raise ValueError("train_runs: these runs cannot share a stack; train them one at a time")
    if pending:
        cfg = pending[0].cfg
        torch.set_num_threads(cfg.threads)
        keep_freed_memory()
        print(f"[bnlab] training {len(pending)} run{'s' * (len(pending) > 1)} on {cfg.device}, "
              f"{cfg.threads} thread{'s' * (cfg.threads > 1)}", flush=True)
        for m in pending:
            ck = torch.load(m.run.checkpoint_path, weights_only=False) if m.run.checkpoint_path.exists() else None
            moved = m.run.set_aside_if_superseded(m.identity, ck["identity"] if ck else None)
            if moved:
                print(f"[bnlab] {m.run.path}: trained under another config; set aside in {moved}", flush=True)
            m.run.prepare(m.cfg)
            m.checkpoint = ck if ck is not None and ck["identity"] == m.identity else None  # another config's: dropped
        data = load(cfg.data)
        # runs resumed from different steps (an earlier partial sweep) catch up as separate stacks
        for _, group in itertools.groupby(sorted(pending, key=_start_step), key=_start_step):
            _train_stack(list(group), data)
    return [m.run.summary() for m in members]  # type: ignore[misc]


def _start_step(m: Member) -> int:
    return m.checkpoint["state"]["step"] if m.checkpoint else 0


def _trim_logs(run: RunDir, last: int | None) -> None:
    """Rows logged after the checkpoint (step `last`; None: no checkpoint) are recomputed. Probes of the training
    batch are logged before that step's update, so the checkpoint's own step is measured again."""
    keep = {METRICS: lambda r: r["step"] <= last, ACTIVATIONS: lambda r: r["step"] <= last,
            PROBES: lambda r: r["step"] < last}
    for name, ok in keep.items():
        run.write_rows(name, [r for r in read_jsonl(run.path / name) if ok(r)] if last is not None else [])


def _setup(members: list[Member], data: Dataset, sc: Scoring, device: torch.device) -> Stepper:
    """Every member's network, optimiser and batch order, from its seed or its checkpoint; then the stepping
    model: one SingleModel, or a StackedMLP of all the members."""
    tc, nets, opts = sc.tc, [], []
    for m in members:
        oc = OmegaConf.to_object(m.cfg.optim)
        net = init_model(m.cfg.model, m.cfg.norm, m.cfg.seed, data.shape, data.num_classes).to(device)
        if m.cfg.model.arch == "cnn":
            net = net.to(memory_format=torch.channels_last)  # oneDNN's fast conv layout on CPU
        opt = torch.optim.SGD(net.parameters(), lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
        m.order = BatchOrder(len(sc.train_x), tc.batch_size, m.cfg.seed, sc.train_y, tc.classes_per_batch)
        if tc.moment_units:
            m.tracker = MomentTracker(net, tc.moment_units)
        if m.checkpoint:
            _restore(m, m.checkpoint, net, opt, device)
        m.rng = torch.get_rng_state()
        nets.append(net)
        opts.append(opt)
        _trim_logs(m.run, m.state.step if m.checkpoint else None)
    nets[0].train()
    if len(members) == 1:
        return SingleModel(nets[0], opts[0], sc.train_x, sc.train_y, tc.loss, members[0].tracker, tc.moment_penalty,
                           members[0].cfg.optim.block, members[0].state.step)
    trackers = [m.tracker for m in members] if tc.moment_units else None
    return StackedMLP(nets, opts, [m.rng for m in members], sc.train_x, sc.train_y, tc.loss, trackers)


def _restore(m: Member, ck: dict, net: Net, opt, device: torch.device) -> None:
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    m.order.load_state_dict(ck["order"])
    torch.set_rng_state(ck["rng"])
    if ck.get("cuda_rng") is not None and device.type == "cuda":  # dropout on a GPU draws from CUDA's RNG
        torch.cuda.set_rng_state_all(ck["cuda_rng"])
    m.state = RunState(**ck["state"])
    if m.tracker:
        m.tracker.load_state_dict(ck["tracker"])


def _train_stack(members: list[Member], data: Dataset) -> None:
    tc = OmegaConf.to_object(members[0].cfg.trainer)  # shared by every member of a stack
    device = use_device(members[0].cfg.device)
    sc = Scoring.on(data, tc, device)
    model = _setup(members, data, sc, device)
    clock, active, step = Clock(), list(members), members[0].state.step
    try:
        for m in members:
            m.mirror = WandbMirror(m.cfg, m.run.path, m.identity)  # after _setup trimmed the logs it replays
        if step == 0:
            log_evals(model, members, range(len(members)), 0, sc, clock)
            for k, m in enumerate(members):
                with clock.probing([m]):
                    m.log_activations(model.member(k), 0, sc)
        bar = tqdm(total=tc.steps, initial=step, disable=not tc.progress, mininterval=2.0, leave=False,
                   desc=(members[0].run.path.name if len(members) == 1 else f"{len(members)} stacked runs")[:40],
                   file=sys.stderr)
        clock.tick = time.perf_counter()
        while active and step < tc.steps:
            idx = torch.stack([m.order.next() for m in active]).to(device)
            ics, land = due(step, tc.ics_every), due(step, tc.landscape_every)
            if ics or land:  # on each member's batch of this step, before its update
                with clock.paused(active):
                    for k, m in enumerate(active):
                        with clock.probing([m]):
                            m.log_gradient_probes(model.member(k), step, idx[k], sc, ics, land)
            losses, correct = model.step(idx)
            step += 1
            diverged = [k for k, m in enumerate(active)
                        if m.state.record(step, losses[k], correct[k] if correct else None, tc)]
            if diverged:
                with clock.paused(active):
                    for k in diverged:
                        active[k].status, active[k].diverged_at = "diverged", step
                    log_evals(model, active, diverged, step, sc, clock, whole=True)  # their last evaluation
                    kept = [k for k in range(len(active)) if k not in diverged]
                    active = [active[k] for k in kept]
                    model.keep(kept)  # its NaNs never meet the others' numbers
            last = step == tc.steps
            if due(step, tc.eval_every) or due(step, tc.probe_every) or due(step, tc.checkpoint_every) or last:
                with clock.paused(active):
                    if due(step, tc.eval_every) or last:
                        log_evals(model, active, range(len(active)), step, sc, clock, whole=last)
                    for k, m in enumerate(active):
                        with clock.probing([m]):
                            if due(step, tc.probe_every) or last:
                                m.log_activations(model.member(k), step, sc)
                            if due(step, tc.checkpoint_every) and not last:
                                m.save_checkpoint(model, k, device)
                    bar.update(step - bar.n)
        bar.close()
    except BaseException:
        for m in members:
            if m.mirror:
                m.mirror.close(exit_code=1)
        raise
    for k, m in enumerate(active):
        if tc.save_model:
            atomic_torch_save(model.member(k).state_dict(), m.run.path / MODEL)
    for m in members:
        m.finish(len(members), device)


def log_evals(model: Stepper, active: list[Member], ks, step: int, sc: Scoring, clock: Clock,
              whole: bool = True) -> None:
    """Score members `ks` of the stack (indices into `active`) on the test set (or its fixed subset, where the
    trainer asks for one before the last evaluation), and on the training subset where asked, all in one pass, and
    log a metrics row for each."""
    ks, members = list(ks), [active[k] for k in ks]
    if not members:  # every member diverged at this step
        return
    with clock.probing(members):
        test_x, test_y = sc.test_set(whole)
        tests = model.evaluate(test_x, test_y, ks)
        train_evals = model.evaluate(sc.train_x[sc.train_eval], sc.train_y[sc.train_eval], ks) \
            if sc.tc.train_eval_size else [None] * len(ks)
        for k, m, test, train_eval in zip(ks, members, tests, train_evals, strict=True):
            m.log_eval(step, test, train_eval, sc, parameter_norms(model.member(k)) if sc.tc.param_norms else {},
                       len(test_y))


def run_jobs(cfgs: list[DictConfig], out_dirs: list[str]) -> list[dict]:
    """The entry point for a run or a stack of them (the CLI's and the launcher's): train, print each result;
    on a failure every run's status and traceback land in its directory, then it re-raises."""
    try:
        summaries = train_runs(cfgs, out_dirs)
    except (KeyboardInterrupt, ConfigError):
        raise
    except Exception:
        text = traceback.format_exc()
        for cfg, out_dir in zip(cfgs, out_dirs, strict=True):
            record_failure(cfg, out_dir, text)
        raise
    for out_dir, summary in zip(out_dirs, summaries, strict=True):
        print_result(out_dir, summary)
    return summaries


def record_failure(cfg: DictConfig, out_dir: str, text: str) -> None:
    run = RunDir(out_dir)
    if run.path.is_dir():
        run.write_error(text)
        run.write_summary({"status": "failed", "identity": run_identity(with_resolved_device(cfg)),
                           "experiment": cfg.experiment, "seed": cfg.seed, "error": text.strip().splitlines()[-1],
                           **environment()})


def print_result(out_dir: str, summary: dict) -> None:
    acc = summary.get("final_test_acc")
    print(f"[bnlab] {out_dir}: {summary['status']} after {summary['steps']} steps"
          + (f", test acc {acc:.4f}" if acc is not None else "")
          + (f", {summary['steps_per_s']:.0f} steps/s" if summary.get("steps_per_s") else "")
          + (f" (one of a stack of {summary['stack_size']})" if summary.get("stack_size", 1) > 1 else ""), flush=True)


def preflight(cfgs: list[DictConfig]) -> None:
    """Before any run starts: every config can run (`validate`) and every dataset the runs read is on disk
    (downloaded if allowed) and, with data.verify, matches torchvision's checksums. Otherwise exit with the one
    message that says what to do, rather than a traceback per job and a run directory that passes for a run."""
    try:
        for cfg in cfgs:
            validate(cfg)
        for name, root, download, verify in sorted({(c.data.name, c.data.root, c.data.download, c.data.verify)
                                                    for c in cfgs if c.data.name in EXPECTED_FILES}):
            ensure_files(name, root, download, verify)
    except (ConfigError, DataError) as e:
        sys.exit(f"[bnlab] {e}")


class Preflight(Callback):
    """Refuse what cannot run before Hydra creates any run directory: an unwritable out_root (runs and sweeps),
    an invalid config or missing data (a single run; the bnlab launcher checks each job of a sweep)."""

    @staticmethod
    def _check_out_root(config: DictConfig) -> None:
        root = Path(config.out_root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as e:
            sys.exit(f"[bnlab] cannot write results under out_root={root} ({e.strerror}); "
                     "pass a writable folder: out_root=/path")

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check_out_root(config)
        preflight([config])

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check_out_root(config)


# An absolute path: run as the bnlab-train console script, Hydra would read "../configs" as a package name.
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def run_composed(cfg: DictConfig) -> None:
    run_jobs([cfg], [HydraConfig.get().runtime.output_dir])


def main() -> None:
    """The command line. A key the schema lacks is refused before Hydra composes the config: Hydra's own message
    for a misspelt key suggests adding it with `+`, and the run would then go ahead and ignore it."""
    try:
        check_keys(command_line_keys(sys.argv[1:]))
    except ConfigError as e:
        sys.exit(f"[bnlab] {e}")
    run_composed()


if __name__ == "__main__":
    main()
