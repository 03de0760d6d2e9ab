"""An experiment's sweep as Hydra expands it: its composed config, its jobs, which run directory is which job,
the identity `train` gives each job under the config files as they are now, and which runs on disk are its
current jobs (`sweep_runs`, what the report analyses); the progress line counts the jobs. Also the order
`make reproduce` starts the sweeps in, from their logged wall times:

  python -m bnlab.sweeps order [--scale cpu]
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


def sweep_seconds(scale: str) -> dict[str, int]:
    """Each experiment's wall time in seconds, as the last "[bnlab] <experiment>: N s" line of
    results/timing_<scale>.log gives it (a whole sweep on one core; second-stage lines are not these)."""
    log = REPO_ROOT / "results" / f"timing_{scale}.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return {m[1]: int(m[2]) for line in lines if (m := re.match(r"^\[bnlab\] (\w+): (\d+) s$", line))}


def longest_first(names: list[str], scale: str) -> list[str]:
    """`names` in the order `make reproduce` starts their sweeps: an experiment never timed first (its wall time
    is unknown, so it may be the longest: started last, it could leave one core working alone at the end), then
    the timed ones, longest first, so that the cores stay busy to the end."""
    seconds = sweep_seconds(scale)
    return sorted(names, key=lambda n: (n in seconds, -seconds.get(n, 0), n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("order",), help="order: print every experiment, longest sweep first")
    parser.add_argument("--scale", default="cpu", help="whose timing log to read (results/timing_<scale>.log)")
    args = parser.parse_args()
    print(" ".join(longest_first(experiment_names(), args.scale)))


if __name__ == "__main__":
    main()
