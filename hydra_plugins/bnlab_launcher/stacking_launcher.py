"""bnlab's sweep launcher: Hydra's joblib launcher, with compatible runs trained together as one stack.

Runs whose configs differ only in the keys config.KEY_ROLES calls `member` (seed, optimiser, init, dropout;
`bnlab.stack.stack_key`) go to one worker as a group and train as a stacked model; every other run is an ordinary
job. Each run still gets its own Hydra job directory (.hydra/, the override-named folder) and its own bnlab run
files, as if it had trained alone.
`trainer.alone=true` trains every run alone (what a stack needs is config.KEY_ROLES's to say).
"""

import logging
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.errors import ConfigCompositionException
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib import Parallel, delayed
from omegaconf import DictConfig, open_dict
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class StackingLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.bnlab_launcher.stacking_launcher.StackingLauncher"
    max_stack: int = 32  # per-model speed stops growing around here (K = 16-64 measured alike)
    # "i/n": train only shard i of n, whole stacks split by expected cost (`bnlab.sweeps.assign_shards`), so that
    # n processes with the same n_jobs share one sweep and together train exactly its jobs
    shard: str | None = None


ConfigStore.instance().store(group="hydra/launcher", name="bnlab_joblib", node=StackingLauncherConf,
                             provider="bnlab")


class StackingLauncher(JoblibLauncher):
    checks_jobs_before_launch = True  # ComposeOnceSweeper: no second compose pass before the launch

    def __init__(self, max_stack: int = 32, shard: str | None = None, **joblib: Any) -> None:
        super().__init__(**joblib)
        self.max_stack, self.shard = max_stack, shard

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        from bnlab.sweeps import parse_shard
        from bnlab.train import preflight

        try:
            shard = parse_shard(self.shard)
        except ValueError as e:
            sys.exit(f"[bnlab] {e}")
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        # loky, as Hydra's joblib launcher (threads do not mix with Hydra); results as they come, for the progress bar
        joblib = {**self.joblib, "backend": "loky", "return_as": "generator_unordered"}
        singleton_state = Singleton.get_state()
        with Parallel(**joblib) as parallel:
            # composing a job's config takes ~0.2 s: in the workers, as Hydra's joblib launcher does
            composed = parallel(delayed(_compose)(self.hydra_context, self.config, overrides, idx, singleton_state)
                                for idx, overrides in enumerate(job_overrides, start=initial_job_idx))
            _, configs, keys = zip(*sorted(composed, key=lambda c: c[0]), strict=True)
            preflight(list(configs))  # an invalid config or missing data: one message, not a traceback per job
            for config in configs:  # one bar for the sweep (below), none per run
                config.trainer.progress = False
            groups, how = _in_shard(self._groups(keys), configs, shard)
            log.info(f"Launching {sum(map(len, groups))} runs{how} as {len(groups)} jobs on "
                     f"{joblib.get('n_jobs')} workers; sweep output dir: {self.config.hydra.sweep.dir}")
            results = parallel(delayed(_execute_group)(k, [configs[i] for i in group], self.hydra_context,
                                                       self.task_function, singleton_state)
                               for k, group in enumerate(groups))
            by_group = _with_progress(results, groups, configs, show=self.config.trainer.progress)
        returns: list[JobReturn | None] = [None] * len(configs)
        for group, group_returns in zip(groups, by_group, strict=True):
            for i, ret in zip(group, group_returns, strict=True):
                returns[i] = ret
        trained = [ret for ret in returns if ret is not None]  # in the jobs' order; a shard's jobs only
        print(sweep_tally(trained, f"{how} as {len(groups)} job{'s' * (len(groups) != 1)}"), flush=True)
        return trained

    def _groups(self, keys: Sequence[str | None]) -> list[list[int]]:
        return stack_groups(keys, self.max_stack, workers=max(1, int(self.joblib.get("n_jobs") or 1)))


def stack_groups(keys: Sequence[str | None], max_stack: int, workers: int) -> list[list[int]]:
    """The jobs of a sweep, as lists of indices into `keys` (each run's `stack_key`; None: it trains alone): runs
    with one key are split so that each of `workers` gets a share (two stacks of 12 beat one of 24 here), at most
    max_stack to a stack."""
    by_key: dict[str, list[int]] = defaultdict(list)
    groups = []
    for i, key in enumerate(keys):
        if key is None:
            groups.append([i])
        else:
            by_key[key].append(i)
    size = max(1, min(max_stack, math.ceil(sum(map(len, by_key.values())) / workers)))
    for members in by_key.values():
        chunks = math.ceil(len(members) / size)
        groups += [members[c::chunks] for c in range(chunks)]  # interleaved: fast and slow runs mixed
    return sorted(groups, key=min)


def _in_shard(groups: list[list[int]], configs, shard: tuple[int, int] | None) -> tuple[list[list[int]], str]:
    """The groups shard (i, n) trains, assigned by their runs' summed `bnlab.efficiency.expected_cost`, and how
    the sweep's tally names the shard; no shard: every group."""
    from bnlab.efficiency import expected_cost
    from bnlab.sweeps import assign_shards

    if shard is None:
        return groups, ""
    i, n = shard
    owner = assign_shards([sum(expected_cost(configs[k]) for k in group) for group in groups], n)
    return [group for group, s in zip(groups, owner, strict=True) if s == i], f" (shard {i} of {n})"


@dataclass
class ComposeOnceSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.bnlab_launcher.stacking_launcher.ComposeOnceSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="bnlab_basic", node=ComposeOnceSweeperConf, provider="bnlab")


class ComposeOnceSweeper(BasicSweeper):
    """Hydra's basic sweeper, without its own pass composing every job before the launch when the launcher is
    bnlab's: each of its launchers composes each job in its workers and checks them all (preflight) before any run
    starts, so the sweeper's pass, one compose per job in series in the main process, would only repeat that
    work. With any other launcher it validates as Hydra's does."""

    def validate_batch_is_legal(self, batch) -> None:
        if not getattr(self.launcher, "checks_jobs_before_launch", False):
            super().validate_batch_is_legal(batch)


def _with_progress(results, groups: list[list[int]], configs, show: bool) -> list[list[JobReturn]]:
    """The jobs' returns in the groups' order, gathered as they finish under one sweep-level bar whose time left
    weighs each run by its expected cost (`bnlab.efficiency.expected_cost`), not by the count of runs."""
    from bnlab.efficiency import expected_cost

    costs = [sum(expected_cost(configs[i]) for i in group) for group in groups]
    by_group: list[list[JobReturn]] = [[] for _ in groups]
    with tqdm(total=sum(costs), disable=not show, desc="sweep", leave=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {postfix} [{elapsed}<{remaining}]") as bar:
        for k, group_returns in results:
            by_group[k] = group_returns
            bar.update(costs[k])
            bar.set_postfix_str(f"{sum(map(len, filter(None, by_group)))}/{len(configs)} runs", refresh=True)
    return by_group


def sweep_tally(returns: list[JobReturn], how: str = "") -> str:
    """How the sweep went, from each run's summary.json: finished / diverged / failed, then the failed runs' paths
    (a job that left no summary failed before its run could record it). `how` follows the count of runs, e.g.
    " as 3 SLURM jobs"."""
    from bnlab.runlog import RunDir

    statuses: dict[str, list[str]] = defaultdict(list)
    for ret in returns:
        run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else None
        summary = RunDir(run_dir).summary() if run_dir else None
        statuses[summary["status"] if summary else "failed"].append(str(run_dir))
    counts = ", ".join(f"{len(statuses[s])} {s}" for s in ("finished", "diverged", "failed"))
    failed = "".join(f"\n[bnlab]   failed: {path}" for path in statuses["failed"])
    return f"[bnlab] sweep of {len(returns)} run{'s' * (len(returns) != 1)}{how}: {counts}{failed}"


def _compose(hydra_context, config: DictConfig, overrides, idx: int,
             singleton_state) -> tuple[int, DictConfig, str | None]:
    """In a worker: one job's config, composed as Hydra's joblib launcher composes it, and its stack key."""
    from bnlab.stack import stack_key  # imports bnlab.config, whose resolvers the composing below needs

    setup_globals()
    Singleton.set_state(singleton_state)
    try:
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    except ConfigCompositionException as e:  # its cause (why the override fails) does not survive the worker
        raise ConfigCompositionException(f"{e}\n{e.__cause__}" if e.__cause__ else str(e)) from None
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    task_cfg = sweep_config.copy()
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    return idx, sweep_config, stack_key(task_cfg)


def _execute_group(k: int, configs: list[DictConfig], hydra_context, task_function,
                   singleton_state) -> tuple[int, list[JobReturn]]:
    """In a worker: one run through Hydra's own `run_job`; a group through `run_job` for its directories,
    then `bnlab.train.run_jobs` for the training of all its runs as one stack. Returned with the group's index k."""
    setup_globals()
    Singleton.set_state(singleton_state)

    def job(config: DictConfig, task) -> JobReturn:
        HydraConfig.instance().set_config(config)
        return run_job(hydra_context=hydra_context, task_function=task, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    if len(configs) == 1:
        return k, [job(configs[0], task_function)]
    from bnlab.train import run_jobs

    prepared = [job(c, lambda cfg: (cfg, HydraConfig.get().runtime.output_dir)) for c in configs]
    cfgs, dirs = zip(*(r.return_value for r in prepared), strict=True)
    try:
        summaries = run_jobs(list(cfgs), list(dirs))
    except Exception as e:
        for ret in prepared:
            ret.status, ret._return_value = JobStatus.FAILED, e
        return k, prepared
    for summary, ret in zip(summaries, prepared, strict=True):
        ret.return_value = summary
    return k, prepared
