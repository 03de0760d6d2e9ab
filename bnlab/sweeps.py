"""An experiment's sweep as Hydra expands it: its composed config, its jobs, which run directory is which job,
the identity `train` gives each job under the config files as they are now, and which runs on disk are its
current jobs (`sweep_runs`, what the report analyses); the progress line counts the jobs. Also a sweep's shards
(`assign_shards`: which of n processes trains which of its jobs), the sweeps' logged wall times, and what
`make reproduce` does with them (`bnlab.schedule`):

  python -m bnlab.sweeps plan --scale cpu --cores 16 [NAMES]  the targets `make reproduce` runs on that many cores
  python -m bnlab.sweeps simulate [--scale cpu]               the plan and the two phases it replaced, on 2-16 cores
"""

import argparse
import copy
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bnlab import runlog
from bnlab.config import CONFIG_DIR, REPO_ROOT, run_identity


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def experiment_config(name: str, scale: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The experiment's composed config. A sweep override (seed=range(5,10), optim.lr=0.1,0.3) names jobs, not
    the config: `sweep_jobs` takes it, compose leaves it out."""
    parser = OverridesParser.create()
    plain = [o for o in overrides if not parser.parse_override(o).is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", f"scale={scale}", *plain])


def runs_root(scale: str, stage: str, overrides: Sequence[str] = ()) -> Path:
    """Where a stage's run directories are: <out_root>/<scale>, or <out_root>/confirmatory/<scale>
    (configs/stage/)."""
    out_root = Path(experiment_config(experiment_names()[0], scale, overrides).out_root)
    return out_root / scale if stage == "exploratory" else out_root / "confirmatory" / scale


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_jobs(name: str, scale: str, overrides: Sequence[str] = ()) -> tuple[set[frozenset[str]], set[str]]:
    """The jobs that `python -m bnlab.train experiment=<name> scale=<scale> <overrides>` launches, each as the set
    of overrides that names its run directory, and the keys that such names leave out. Expanded as Hydra's basic
    sweeper does: the experiment's sweep params, then the given overrides, which replace a param of their key."""
    plain = [o for o in overrides if not OverridesParser.create().parse_override(o).is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", f"scale={scale}", *plain], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    choices = {}
    for o in OverridesParser.create().parse_overrides([*params, *overrides]):
        key = o.get_key_element()
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    named = [v for k, v in choices.items() if _key(k) not in excluded]
    return {frozenset(job) for job in itertools.product(*named)}, excluded


def job_name(job_overrides: tuple[str, ...] | None, excluded: set[str]) -> frozenset[str] | None:
    """The overrides that name a run's directory, as `sweep_jobs` lists a job (None: no record of them)."""
    return None if job_overrides is None else frozenset(o for o in job_overrides if _key(o) not in excluded)


def in_sweep(name: frozenset[str] | None, jobs: set[frozenset[str]]) -> bool:
    """Was the run of this `job_name` one of the sweep's jobs? A run without Hydra's record of its overrides counts."""
    return name is None or name in jobs


def job_identities(name: str, scale: str, jobs: set[frozenset[str]]) -> dict[frozenset[str], str]:
    """The identity (`config.run_identity`) that `train` gives each job under the config files as they are now.
    One Hydra compose per combination of config-group choices (~0.2 s each); the job's other overrides are set
    on a copy of it, as Hydra sets them after composing, so a grid of rates and seeds costs one compose."""
    parser, composed, out = OverridesParser.create(), {}, {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for job in jobs:
            groups = tuple(sorted(o for o in job if (CONFIG_DIR / _key(o)).is_dir()))
            if groups not in composed:
                composed[groups] = compose("train", overrides=[f"experiment={name}", f"scale={scale}", *groups])
            cfg = copy.deepcopy(composed[groups])
            for o in parser.parse_overrides(sorted(job - set(groups))):
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
            out[job] = run_identity(cfg)
    return out


def sweep_runs(name: str, scale: str, root: Path, overrides: list[str]) -> pd.DataFrame:
    """The run directories of an experiment under `root`, marked `in_sweep` (a job of its current sweep) and
    `stale` (trained under an earlier config of it: its identity is not the one train would give it now)."""
    on_disk = runlog.runs(root / name)
    if not len(on_disk):
        return on_disk
    jobs, excluded = sweep_jobs(name, scale, overrides)
    named = [job_name(o, excluded) for o in on_disk.job_overrides]
    on_disk["in_sweep"] = [in_sweep(n, jobs) for n in named]
    current = job_identities(name, scale, {n for n in named if n in jobs})
    identity = on_disk.identity if "identity" in on_disk else [None] * len(on_disk)
    on_disk["stale"] = [n in current and isinstance(i, str) and i != current[n]
                        for n, i in zip(named, identity, strict=True)]
    return on_disk.drop(columns="job_overrides")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """hydra.launcher.shard: "i/n" is shard i of n (0 <= i < n); None, the whole sweep."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", str(text).strip())
    if not m or int(m[1]) >= int(m[2]):
        raise ValueError(f"hydra.launcher.shard={text} is not a shard of a sweep: write i/n with 0 <= i < n, "
                         "e.g. hydra.launcher.shard=0/4 for the first of four")
    return int(m[1]), int(m[2])


def assign_shards(costs: Sequence[float], n: int) -> list[int]:
    """Each group's shard of n, by longest processing time: the costliest group first, each to the shard with the
    least cost so far (ties: the lower group, the lower shard). A pure function of the groups' costs, so every
    shard's process, which forms the same groups from the same configs, gets the same answer."""
    load, shard = [0.0] * n, [0] * len(costs)
    for g in sorted(range(len(costs)), key=lambda g: (-costs[g], g)):
        shard[g] = min(range(n), key=lambda s: (load[s], s))
        load[shard[g]] += costs[g]
    return shard


# A sweep's wall time in the timing log: "[bnlab] <experiment>[ (seeds 105-109)][ [shard i/n]]: N s"
TIME_LINE = re.compile(r"^\[bnlab\] (\w+)( \(seeds [\d-]+\))?(?: \[shard (\d+)/(\d+)\])?: (\d+) s$")
HEADER = "[bnlab] make reproduce on "  # the line that starts each reproduction's block in the timing log


def timing_log(scale: str) -> list[str]:
    log = REPO_ROOT / "results" / f"timing_{scale}.log"
    return log.read_text().splitlines() if log.is_file() else []


def last_block(lines: list[str]) -> list[str]:
    """The lines of the last `make reproduce` in a timing log (after its header line; all of them without one)."""
    starts = [i for i, line in enumerate(lines) if line.startswith(HEADER)]
    return lines[starts[-1] + 1:] if starts else lines


def logged_seconds(lines: list[str]) -> dict[tuple[str, bool], int]:
    """{(experiment, second stage?): seconds}, each sweep's last time in these timing-log lines: a whole sweep's
    line, or the sum of its shards' lines since it was last logged whole or in another number of shards (a shard
    logged twice starts a new set; a set not yet complete counts as its mean shard times n)."""
    out: dict[tuple[str, bool], int] = {}
    shards: dict[tuple[str, bool], tuple[int, dict[int, int]]] = {}
    for m in filter(None, map(TIME_LINE.match, lines)):
        key, seconds = (m[1], m[2] is not None), int(m[5])
        if m[3] is None:
            out[key] = seconds
            shards.pop(key, None)
            continue
        i, n = int(m[3]), int(m[4])
        if key not in shards or shards[key][0] != n or i in shards[key][1]:
            shards[key] = (n, {})
        shards[key][1][i] = seconds
        out[key] = round(sum(shards[key][1].values()) * n / len(shards[key][1]))
    return out


def sweep_seconds(scale: str) -> dict[str, int]:
    """Each experiment's wall time in seconds, as the last "[bnlab] <experiment>: N s" line of
    results/timing_<scale>.log gives it (a whole sweep on one core), or its shards' lines add up to (second-stage
    lines are not these)."""
    return {name: s for (name, second), s in logged_seconds(timing_log(scale)).items() if not second}


def main() -> None:
    from bnlab import schedule

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("plan", "simulate"))
    parser.add_argument("--scale", default="cpu", help="whose timing log to read (results/timing_<scale>.log)")
    parser.add_argument("--cores", type=int, default=2, help="plan: the sweeps make runs at a time")
    parser.add_argument("--stage", default="confirmatory", choices=("exploratory", "confirmatory"),
                        help="plan: an exploratory reproduction has no second stage")
    parser.add_argument("names", nargs="*", help="plan: these experiments (default: every one)")
    args = parser.parse_intermixed_args()  # the names after the options, as the Makefile passes them
    names = args.names or experiment_names()
    if args.command == "plan":
        units = schedule.plan(names, args.scale, args.cores, args.stage == "confirmatory")
        print(" ".join(u.name for u in units if not u.deps))  # the first-stage units: they start the rest
    else:
        print(schedule.simulation_table(args.scale))


if __name__ == "__main__":
    main()
