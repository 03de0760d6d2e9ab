"""bnlab's SLURM launcher: hydra-submitit-launcher's, with bnlab's stacks as cluster jobs.

Before anything is submitted, every job of the sweep is composed and checked (`bnlab.train.preflight`), and runs
already finished are left out. The rest go to SLURM as one job array: one array task per stack (the runs that
differ only in keys config.KEY_ROLES calls `member`, trained together as one worker trains them locally) and one per
lone run, so a cluster trains as many runs per core-second as a laptop. Each run lands in the folder the local
launcher gives it.

Jobs are followed with `squeue`, not `sacct`, so a cluster without job accounting works too. A job that ends
without a result (scancel, its time limit, a failed node) is a failed job; its runs resume from their checkpoints
when the sweep is run again. A run that an earlier launch's job still holds is not submitted again
(`<sweep>/.submitit/submitted.json` says which job each run went to).
"""

import functools
import getpass
import json
import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from joblib import Parallel, delayed
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.bnlab_launcher.stacking_launcher import (
    _compose,
    _execute_group,
    _with_progress,
    stack_groups,
    sweep_tally,
)

log = logging.getLogger(__name__)


@dataclass
class StackingSlurmLauncherConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.bnlab_launcher.slurm_launcher.StackingSlurmLauncher"
    max_stack: int = 32        # as the local launcher's: per-model speed stops growing around here
    poll_s: float = 10.0       # how often squeue is asked which jobs are still queued or running
    compose_jobs: int = 1      # processes composing the sweep's configs on the submitting node (more: for sweeps of
                               # hundreds of runs, ~0.1 s each)


ConfigStore.instance().store(group="hydra/launcher", name="bnlab_slurm", node=StackingSlurmLauncherConf,
                             provider="bnlab")


class StackingSlurmLauncher(SlurmLauncher):
    checks_jobs_before_launch = True  # ComposeOnceSweeper: no second compose pass before the launch

    def __init__(self, max_stack: int = 32, poll_s: float = 10.0, compose_jobs: int = 1, **params: Any) -> None:
        super().__init__(**params)
        self.max_stack, self.poll_s, self.compose_jobs = max_stack, poll_s, compose_jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        from bnlab.train import preflight

        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        with Parallel(n_jobs=self.compose_jobs, backend="loky") as parallel:
            composed = parallel(delayed(_compose)(self.hydra_context, self.config, overrides, idx, state)
                                for idx, overrides in enumerate(job_overrides, start=initial_job_idx))
        _, configs, keys = zip(*composed, strict=True)
        preflight(list(configs))  # an invalid config or missing data: one message, and nothing submitted
        Singleton.set_state(state)
        returns: list[JobReturn | None] = [None] * len(configs)
        todo = []
        for i, config in enumerate(configs):
            summary = _finished_summary(config)
            if summary is None:
                todo.append(i)
            else:
                returns[i] = _job_return(config, JobStatus.COMPLETED, summary)
        todo = self._not_in_earlier_jobs(todo, configs)
        # as large as a stack may be: on a cluster more stacks mean more jobs, not faster ones
        groups = [[todo[j] for j in g] for g in stack_groups([keys[i] for i in todo], self.max_stack, workers=1)]
        for group, group_returns in zip(groups, self._submit_and_follow(groups, configs, state), strict=True):
            for i, ret in zip(group, group_returns, strict=True):
                returns[i] = ret
        launched = [ret for ret in returns if ret is not None]
        print(sweep_tally(launched, f" as {len(groups)} SLURM job{'s' * (len(groups) != 1)}"), flush=True)
        return launched

    def _submit_and_follow(self, groups: list[list[int]], configs: Sequence[DictConfig],
                           state: Any) -> list[list[JobReturn]]:
        """Submit each group as one task of a job array and follow them under the sweep's bar; each group's
        returns, in the groups' order."""
        if not groups:
            log.info("Every run of this sweep is finished: nothing submitted")
            return []
        for config in configs:  # one bar for the sweep, here; none per run in the jobs' logs
            config.trainer.progress = False
        run_group = functools.partial(_execute_group, hydra_context=self.hydra_context,
                                      task_function=self.task_function, singleton_state=state)
        jobs = self._executor().map_array(run_group, range(len(groups)), [[configs[i] for i in g] for g in groups])
        self._record(groups, jobs, configs)
        log.info(f"Submitted {sum(map(len, groups))} runs as {len(jobs)} SLURM jobs "
                 f"(array {jobs[0].job_id.split('_')[0]}); sweep output dir: {self.config.hydra.sweep.dir}")
        ended = ((k, _group_returns(job, [configs[i] for i in groups[k]]))
                 for k, job in _as_they_end(jobs, self.poll_s))
        return _with_progress(ended, groups, configs, show=self.config.trainer.progress)

    @property
    def _ledger(self) -> Path:
        """Which SLURM job each run of this sweep folder was last submitted in."""
        return Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "submitted.json"  # type: ignore[union-attr]

    def _submitted(self) -> dict[str, str]:
        return json.loads(self._ledger.read_text()) if self._ledger.exists() else {}

    def _not_in_earlier_jobs(self, todo: list[int], configs: Sequence[DictConfig]) -> list[int]:
        """`todo` less the runs an earlier launch submitted in a job SLURM still holds: submitting them again would
        train one run in two jobs at once."""
        submitted = self._submitted()
        queued = _queued_job_ids() if submitted else set()
        jobs = {i: str(submitted.get(str(_run_dir(configs[i])))) for i in todo}
        held = {i: job for i, job in jobs.items() if job in (queued or set())}
        if held:
            print(f"[bnlab] {len(held)} run{'s' * (len(held) != 1)} still in SLURM job{'s' * (len(held) != 1)} of "
                  f"an earlier launch ({', '.join(sorted(set(held.values())))}): not submitted again", flush=True)
        return [i for i in todo if i not in held]

    def _record(self, groups: list[list[int]], jobs: list[Any], configs: Sequence[DictConfig]) -> None:
        submitted = self._submitted()
        submitted.update({str(_run_dir(configs[i])): job.job_id for group, job in zip(groups, jobs, strict=True)
                          for i in group})
        self._ledger.write_text(json.dumps(submitted, indent=0, sort_keys=True))

    def _executor(self) -> Any:
        """submitit's executor with this config's resources, as hydra-submitit-launcher builds it."""
        import submitit

        params = {k: v for k, v in self.params.items() if k != "submitit_folder"}
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor


def _run_dir(config: DictConfig) -> Path:
    """Where run_job will put this job's run: the sweep dir and the override-named subdir."""
    HydraConfig.instance().set_config(config)  # `${hydra:job.override_dirname}` reads the current job's config
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def _finished_summary(config: DictConfig) -> dict | None:
    """The run's summary if it already finished (or diverged) under this very config, as the trainer would skip it."""
    from bnlab.config import run_identity
    from bnlab.runlog import RunDir
    from bnlab.runtime import with_resolved_device

    task = config.copy()
    with open_dict(task):
        del task["hydra"]
    run = RunDir(_run_dir(config))
    return run.summary() if run.is_done(run_identity(with_resolved_device(task))) else None


def _job_return(config: DictConfig, status: JobStatus, value: Any) -> JobReturn:
    """A JobReturn for a run that was not (or could not be) returned by a job: sweep_tally reads its folder."""
    config = config.copy()
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(_run_dir(config))
    return JobReturn(overrides=list(config.hydra.overrides.task), hydra_cfg=config,
                     task_name=config.hydra.job.name, status=status, _return_value=value)


def _group_returns(job: Any, configs: list[DictConfig]) -> list[JobReturn]:
    """The group's JobReturns from its job's result; a job that ended without one fails every run of the group."""
    if job.paths.result_pickle.exists():
        try:
            return job.result()[1]
        except Exception as e:  # raised outside the runs' own failure record (in composing or run_job)
            error: Exception = e
    else:
        error = RuntimeError(f"SLURM job {job.job_id} ended without a result (cancelled, out of time or its node "
                             f"failed; its log: {job.paths.stderr}); run the sweep again to resume its runs from "
                             f"their checkpoints")
    return [_job_return(config, JobStatus.FAILED, error) for config in configs]


def _as_they_end(jobs: list[Any], poll_s: float) -> Iterator[tuple[int, Any]]:
    """(index, job) for each job once it has a result or has left the queue. A job gone from squeue is given three
    more polls for its result file to appear (a shared filesystem may show it late); a poll squeue did not answer
    counts for nothing."""
    waiting, gone = dict(enumerate(jobs)), dict[int, int]()
    while waiting:
        queued = _queued_job_ids()
        for k, job in list(waiting.items()):
            if job.paths.result_pickle.exists() or gone.get(k, 0) >= 3:
                yield k, waiting.pop(k)
            elif queued is not None and job.job_id not in queued:
                gone[k] = gone.get(k, 0) + 1
        if waiting:
            time.sleep(poll_s)


def _queued_job_ids() -> set[str] | None:
    """This user's jobs that SLURM still holds (pending, running, completing, requeued), one id per array task;
    None when squeue fails (a busy slurmctld times out)."""
    squeue = subprocess.run(["squeue", f"--user={getpass.getuser()}", "--noheader", "--array", "--format=%i"],
                            capture_output=True, text=True)
    if squeue.returncode != 0:
        log.warning(f"squeue failed ({squeue.stderr.strip()}); asking again in a moment")
        return None
    return set(squeue.stdout.split())
