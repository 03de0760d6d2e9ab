"""The one trainer. Every experiment in bnlab is a config for it plus an analysis of what it writes.

  python -m bnlab.train data=mnist model.activation=sigmoid norm=batch optim.lr=0.5 seed=1
  python -m bnlab.train -m norm=none,batch optim.lr=0.1,0.5 'seed=range(3)'
  python -m bnlab.train experiment=fig1              # an experiment config is a whole sweep
"""

import contextlib
import itertools
import operator
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnlab.config import CONFIG_DIR, ConfigError, OptimConfig, TrainerConfig, run_identity
from bnlab.data import EXPECTED_FILES, BatchOrder, DataError, Dataset, ensure_files, load
from bnlab.models import init_model
from bnlab.probes import MomentTracker, parameter_norms
from bnlab.run import Clock, EvalData, Member, due, open_mirrors, record_failure, trim_logs
from bnlab.runlog import RunDir
from bnlab.runtime import keep_freed_memory, use_device, with_resolved_device
from bnlab.stack import StackedMLP, stack_key
from bnlab.stepping import SingleModel, Stepper
from bnlab.validate import check_keys, command_line_keys, validate


def train(cfg: DictConfig, out_dir: str) -> dict:
    """Train one run into out_dir and return its summary. Resumes from a checkpoint; skips a finished run."""
    return train_runs([cfg], [out_dir])[0]


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
            m.prepare()
        data = load(cfg.data)
        # runs resumed from different steps (an earlier partial sweep) catch up as separate stacks
        start = operator.attrgetter("start_step")
        for _, same_start in itertools.groupby(sorted(pending, key=start), key=start):
            train_together(list(same_start), data)
    return [m.run.summary() for m in members]  # type: ignore[misc]


def train_together(members: list[Member], data: Dataset) -> None:
    """Train `members` (one run, or a stack of runs at the same step) to trainer.steps, then write their summaries."""
    # one schema dataclass for all: a DictConfig read costs microseconds, far more than a step at batch 2
    trainer = cast(TrainerConfig, OmegaConf.to_object(members[0].cfg.trainer))
    device = use_device(members[0].cfg.device)
    eval_data = EvalData.on(data, trainer, device)
    model = build_stepper(members, data, eval_data, device)
    clock, active, step = Clock(), list(members), members[0].state.step
    intervals = (trainer.eval_every, trainer.probe_every, trainer.checkpoint_every)
    with contextlib.ExitStack() as closing:
        open_mirrors(members, closing)  # after build_stepper trimmed the logs they replay
        # a fresh start's evaluation and activations at step 0
        if step == 0:
            log_start(model, members, eval_data, clock)
        bar = closing.enter_context(progress_bar(members, trainer, step))
        clock.tick = time.perf_counter()  # training starts: what came before it was evaluation
        while active and step < trainer.steps:
            idx = torch.stack([m.next_batch() for m in active]).to(device)
            # ICS and the landscape on each member's batch of this step, before its update
            if due(step, trainer.ics_every) or due(step, trainer.landscape_every):
                with clock.paused(active):
                    log_gradient_probes(model, active, step, idx, eval_data)
            # one training step of every member
            losses, correct = model.step(idx)
            step += 1
            for k, m in enumerate(active):
                m.state.record(step, losses[k], correct[k] if correct else None, trainer.batch_size)
            # a diverged member is evaluated one last time and dropped
            diverged = [k for k, m in enumerate(active) if m.state.diverged(losses[k], trainer)]
            if diverged:
                with clock.paused(active):
                    active = drop_diverged(model, active, diverged, step, eval_data, clock)
            # evaluate, probe the activations and write checkpoints where due
            if any(due(step, every) for every in intervals) or step == trainer.steps:
                with clock.paused(active):
                    log_and_checkpoint(model, active, step, eval_data, clock, device)
                    bar.update(step - bar.n)
    # the final weights where asked for, and every run's summary
    finish(model, members, active, trainer.save_model, device)


def build_stepper(members: list[Member], data: Dataset, eval_data: EvalData, device: torch.device) -> Stepper:
    """Every member's network, optimiser and batch order, from its seed or its checkpoint; then the stepping
    model: one SingleModel, or a StackedMLP of all the members."""
    trainer, nets, opts, rngs = eval_data.trainer, [], [], []
    for m in members:
        optim = cast(OptimConfig, OmegaConf.to_object(m.cfg.optim))
        net = init_model(m.cfg.model, m.cfg.norm, m.cfg.seed, data.shape, data.num_classes).to(device)
        if m.cfg.model.arch == "cnn":
            net = net.to(memory_format=torch.channels_last)  # oneDNN's fast conv layout on CPU
        opt = torch.optim.SGD(net.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
        m.order = BatchOrder(len(eval_data.train_x), trainer.batch_size, m.cfg.seed, eval_data.train_y,
                             trainer.classes_per_batch)
        if trainer.moment_units:
            m.tracker = MomentTracker(net, trainer.moment_units)
        if m.checkpoint:
            m.restore(net, opt, device)
        nets.append(net)
        opts.append(opt)
        rngs.append(torch.get_rng_state())  # where a member's dropout and noise draws start
        trim_logs(m.run, m.state.step if m.checkpoint else None)
    nets[0].train()
    if len(members) == 1:
        return SingleModel(nets[0], opts[0], eval_data.train_x, eval_data.train_y, trainer.loss, members[0].tracker,
                           trainer.moment_penalty, members[0].cfg.optim.block, members[0].state.step)
    trackers = [m.tracker for m in members if m.tracker]
    return StackedMLP(nets, opts, rngs, eval_data.train_x, eval_data.train_y, trainer.loss, trackers)


def progress_bar(members: list[Member], trainer: TrainerConfig, step: int) -> tqdm:
    name = members[0].run.path.name if len(members) == 1 else f"{len(members)} stacked runs"
    return tqdm(total=trainer.steps, initial=step, disable=not trainer.progress, mininterval=2.0, leave=False,
                desc=name[:40], file=sys.stderr)


def log_start(model: Stepper, members: list[Member], eval_data: EvalData, clock: Clock) -> None:
    """A fresh start's metrics and activations at step 0."""
    log_evals(model, members, range(len(members)), 0, eval_data, clock)
    for k, m in enumerate(members):
        with clock.probing([m]):
            m.log_activations(model.member(k), 0, eval_data)


def log_gradient_probes(model: Stepper, active: list[Member], step: int, idx: torch.Tensor,
                        eval_data: EvalData) -> None:
    """ICS and the landscape, where due, on each member's batch of this step (idx: members x batch)."""
    trainer = eval_data.trainer
    ics, land = due(step, trainer.ics_every), due(step, trainer.landscape_every)
    for k, m in enumerate(active):
        with Clock.probing([m]):
            m.log_gradient_probes(model.member(k), step, idx[k], eval_data, ics, land)


def drop_diverged(model: Stepper, active: list[Member], diverged: list[int], step: int, eval_data: EvalData,
                  clock: Clock) -> list[Member]:
    """The members still training: the diverged ones (indices into `active`) get their last, whole evaluation
    and leave the model, so that their NaNs never meet the others' numbers."""
    for k in diverged:
        active[k].status, active[k].diverged_at = "diverged", step
    log_evals(model, active, diverged, step, eval_data, clock, whole=True)
    model.drop_diverged(diverged)
    return [m for k, m in enumerate(active) if k not in diverged]


def log_and_checkpoint(model: Stepper, active: list[Member], step: int, eval_data: EvalData, clock: Clock,
                       device: torch.device) -> None:
    """The evaluation, activation probes and checkpoints due at this step; at the last step every one but the
    checkpoint, which the summary replaces, the evaluation on the whole test set."""
    trainer, last = eval_data.trainer, step == eval_data.trainer.steps
    if due(step, trainer.eval_every) or last:
        log_evals(model, active, range(len(active)), step, eval_data, clock, whole=last)
    for k, m in enumerate(active):
        with clock.probing([m]):
            if due(step, trainer.probe_every) or last:
                m.log_activations(model.member(k), step, eval_data)
            if due(step, trainer.checkpoint_every) and not last:
                m.save_checkpoint(model, k, device)


def finish(model: Stepper, members: list[Member], active: list[Member], save_model: bool,
           device: torch.device) -> None:
    """The final weights of the members still training (`active`) where asked for; every member's summary."""
    for k, m in enumerate(active):
        if save_model:
            m.save_model(model.member(k))
    for m in members:
        m.finish(len(members), device)


def log_evals(model: Stepper, active: list[Member], indices: Iterable[int], step: int, eval_data: EvalData,
              clock: Clock, whole: bool = True) -> None:
    """Evaluate the members at `indices` (into `active`) on the test set (or its fixed subset, where the trainer
    asks for one before the last evaluation), and on the training subset where asked, all in one pass, and log a
    metrics row for each."""
    chosen = list(indices)
    members = [active[k] for k in chosen]
    if not members:  # every member diverged at this step
        return
    trainer = eval_data.trainer
    with clock.probing(members):
        test_x, test_y = eval_data.test_set(whole)
        tests = model.evaluate(test_x, test_y, chosen)
        subset = eval_data.train_eval
        train_evals = model.evaluate(eval_data.train_x[subset], eval_data.train_y[subset], chosen) \
            if trainer.train_eval_size else [None] * len(chosen)
        for k, m, test, train_eval in zip(chosen, members, tests, train_evals, strict=True):
            m.log_eval(step, test, train_eval, eval_data, parameter_norms(model.member(k)) if trainer.param_norms
                       else {}, len(test_y))


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
