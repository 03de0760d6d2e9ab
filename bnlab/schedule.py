"""How `make reproduce` spreads its sweeps over the cores, and a simulation of it on the logged times.

The work is a graph of units, each one single-thread process and one make target: an experiment's first-stage
sweep (seeds 100-104), whole or in shards (`hydra.launcher.shard`, whole stacks each), then its second stage (seeds
105-109), whole or in shards, each of which first asks `python -m bnlab.report --inconclusive <experiment>` whether
the first seeds left a cell undecided and trains only if so. An experiment's second stage waits for its own first
stage alone, not for every experiment's. `plan` splits the experiments whose two stages would outlast the cores'
fair share of the work and orders the first-stage units for `make -j<cores>`; the last of an experiment's to end
starts its second stage (the Makefile's `sweep-%`). `simulate` runs the plan, and the two phases it replaced, on
the last reproduction's logged times.
"""

import functools
import heapq
import json
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

import yaml
from omegaconf import OmegaConf

from bnlab.archive import archive_path
from bnlab.claims import FIRST_SEEDS
from bnlab.config import schema_values
from bnlab.registration import CONFIRMATORY_SEEDS
from bnlab.runlog import CONFIG
from bnlab.sweeps import assign_shards, last_block, logged_seconds, timing_log

# What one more process costs, measured on the CPU of results/timing_cpu.log's last block (docs/speed.md, "Every core")
PROCESS_S = 7.0  # a sweep's fixed start: `bnlab.registration overrides` (~4 s) and bnlab.train's imports (~3 s)
COMPOSE_S = 0.1  # composing one job's config, which every shard of a sweep does for all of its jobs
DECIDE_S = 9.0  # `report --inconclusive <experiment>`: 5-43 s, 9.4 on average over the 28 experiments
CHECK_ALL_S = 351.0  # `report --inconclusive` of every experiment at once, between the two phases
SECOND_SEED = CONFIRMATORY_SEEDS[FIRST_SEEDS]  # the second stage's seeds are this one and after


@dataclass(frozen=True)
class Unit:
    name: str  # its make target
    cost: float  # seconds on one core
    deps: tuple[str, ...] = ()


def simulate(units: list[Unit], cores: int) -> dict[str, tuple[float, float]]:
    """Each unit's start and end by list scheduling: whenever a core is free, it starts the first unit in `units`
    whose prerequisites have all ended."""
    now, done = 0.0, set[str]()
    times: dict[str, tuple[float, float]] = {}
    running: list[tuple[float, str]] = []  # a heap of (end, unit)
    while len(times) < len(units):
        ready = (u for u in units if u.name not in times and done.issuperset(u.deps))
        if len(running) < cores and (u := next(ready, None)):
            times[u.name] = (now, now + u.cost)
            heapq.heappush(running, (now + u.cost, u.name))
            continue
        now, name = heapq.heappop(running)
        done.add(name)
    return times


def makespan(units: list[Unit], cores: int) -> float:
    return max(end for _, end in simulate(units, cores).values())


def stage_seconds(lines: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Each experiment's first- and second-stage seconds in the last reproduction of a timing log. A second stage
    that a line of that block says was timed under other load ("inflated") counts as long as the first stage:
    it is the same jobs at five other seeds, and the second stages timed without load took 1.07x their first."""
    block = last_block(lines)
    times = logged_seconds(block)
    loaded = {word for line in block if "inflated" in line for word in re.findall(r"\w+", line)}
    first = {name: s for (name, more), s in times.items() if not more}
    second = {name: first.get(name, s) if name in loaded else s for (name, more), s in times.items() if more}
    return first, second


@dataclass
class Sweep:
    """One stage's sweep of one experiment as the launcher groups it with one worker (n_jobs=1)."""

    jobs: int
    groups: list[float]  # each group's expected cost (`efficiency.expected_cost`), which shards are assigned by

    def shares(self, n: int) -> list[float]:
        """Each of n shards' share of the training."""
        owner = assign_shards(self.groups, n)
        return [sum(g for g, s in zip(self.groups, owner, strict=True) if s == i) / sum(self.groups)
                for i in range(n)]

    def shard_costs(self, seconds: float, n: int) -> list[float]:
        """Seconds of each of n shards of a sweep that took `seconds` whole: the fixed start and the composing of
        every job in each, the rest by its share."""
        fixed = PROCESS_S + COMPOSE_S * self.jobs
        return [fixed + (seconds - fixed) * share for share in self.shares(n)] if n > 1 else [seconds]


def committed_configs(scale: str, names: Iterable[str]) -> dict[str, list[dict]]:
    """The configs of the committed confirmatory runs of these experiments (results/evidence_<scale>_confirmatory
    .tar.xz, ~2 s to read), in folder order: the jobs their two stages' sweeps composed."""
    out: dict[str, list[dict]] = {name: [] for name in names}
    archive = archive_path(scale, "confirmatory")
    if not out or not archive.is_file():
        return out
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            parts = member.name.split("/")  # <experiment>/<run>/<file>
            if len(parts) == 3 and parts[0] in out and parts[2] == CONFIG:
                out[parts[0]].append(yaml.load(tar.extractfile(member), Loader=yaml.CSafeLoader))  # type: ignore[arg-type]
    return out


@functools.cache
def _key_and_cost(config_json: str) -> tuple[str | None, float]:
    from bnlab.efficiency import expected_cost
    from bnlab.stack import stack_key

    defaults = schema_values()  # a key a run predates has its default
    job = OmegaConf.create({k: {**defaults[k], **v} if isinstance(v, dict) else v
                            for k, v in json.loads(config_json).items()})
    return stack_key(job), expected_cost(job)


def job_costs(configs: list[dict]) -> list[tuple[str | None, float, int]]:
    """(`stack.stack_key`, `efficiency.expected_cost`, seed) of each run config, as the launcher computes them
    (neither depends on the seed, so runs that differ only in it are computed once)."""
    return [(*_key_and_cost(json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)),
             config["seed"]) for config in configs]


def sweep_of(jobs: list[tuple[str | None, float, int]], second: bool) -> Sweep:
    """The first (seeds 100-104) or second (105-109) stage's sweep of these `job_costs`."""
    from hydra_plugins.bnlab_launcher.stacking_launcher import StackingLauncherConf, stack_groups

    jobs = [job for job in jobs if (job[2] >= SECOND_SEED) == second]
    groups = stack_groups([key for key, _, _ in jobs], StackingLauncherConf.max_stack, workers=1)
    return Sweep(len(jobs), [sum(jobs[i][1] for i in g) for g in groups])


def chain(first: list[float], second: list[float]) -> float:
    """The longest path through an experiment's units: its longest first-stage shard, the check, its longest
    second-stage shard."""
    return max(first) + DECIDE_S + max(second, default=0.0)


def shard_costs(sweeps: tuple[Sweep, Sweep] | None, first: float, second: float, n: int) -> tuple[list, list]:
    """Seconds of each of n shards of an experiment's first and second stage (0: it has none)."""
    if n == 1 or sweeps is None:
        return [first], [second]
    return sweeps[0].shard_costs(first, n), sweeps[1].shard_costs(second, n) if second else [0.0] * n


def shard_counts(first: dict[str, int], second: dict[str, int], cores: int,
                 sweeps: dict[str, tuple[Sweep, Sweep]]) -> dict[str, int]:
    """How many shards each experiment of `sweeps` (those that may be split) gets: the fewest whose chain fits in
    the cores' fair share of all the work, at most as many as its first stage has stacks and lone runs."""
    target = (sum(first.values()) + sum(second.values())) / cores
    counts = {}
    for name, (sweep, _) in sweeps.items():
        fits = [n for n in range(1, len(sweep.groups) + 1)
                if chain(*shard_costs(sweeps[name], first[name], second.get(name, 0), n)) <= target]
        counts[name] = min(fits, default=len(sweep.groups))
    return counts


def plan_units(names: list[str], first: dict[str, int], second: dict[str, int], counts: dict[str, int],
               sweeps: dict[str, tuple[Sweep, Sweep]], confirmatory: bool = True) -> list[Unit]:
    """The units of `make reproduce` in the order they take a free core: an experiment's second-stage units
    (`more-%`, each of which first checks whether its experiment needs it) once its first stage has ended, longest
    first; else the next first-stage unit (`sweep-%`, whole or a shard), an experiment never timed first and then
    the longest chains. In make, the last first-stage unit of an experiment to end goes on with its second stage on
    its own core, in a make whose other shards take cores from the -j pool as they free, vying with the first-stage
    units not yet started: here they go first."""
    heads, tails = [], []
    for name in names:
        n = counts.get(name, 1)
        tags = [""] if n == 1 else [f".{i}of{n}" for i in range(n)]
        ones, twos = shard_costs(sweeps.get(name), first.get(name, 0), second.get(name, 0), n)
        units = [Unit(f"sweep-{name}{tag}", cost) for tag, cost in zip(tags, ones, strict=True)]
        heads += [(name in first, -(u.cost + (DECIDE_S + max(twos) if confirmatory else 0.0)), u) for u in units]
        tails += [(-cost, Unit(f"more-{name}{tag}", DECIDE_S + cost, tuple(u.name for u in units)))
                  for tag, cost in zip(tags, twos, strict=True) if confirmatory]
    return [u for _, u in sorted(tails, key=lambda t: t[0])] + [u for *_, u in sorted(heads, key=lambda h: h[:2])]


def two_phase_units(first: dict[str, int], second: dict[str, int]) -> list[Unit]:
    """The policy this plan replaces: every first-stage sweep, longest first; once all have ended, one check of
    every experiment; then the second stages, cheapest first stage first (`report.inconclusive`'s order)."""
    phase = [Unit(f"sweep-{name}", s) for name, s in sorted(first.items(), key=lambda kv: (-kv[1], kv[0]))]
    check = Unit("check", CHECK_ALL_S, tuple(u.name for u in phase))
    return [*phase, check, *(Unit(f"more-{name}", second[name], (check.name,))
                             for name in sorted(second, key=lambda name: first.get(name, 10**9)))]


def splittable(names: list[str], first: dict[str, int], second: dict[str, int], cores: int,
               scale: str) -> dict[str, tuple[Sweep, Sweep]]:
    """The sweeps of the experiments whose chain outlasts the cores' fair share of the work, as the committed
    confirmatory runs give them (none without those runs: then nothing is split)."""
    target = (sum(first.values()) + sum(second.values())) / cores
    long = [name for name in names if name in first and chain([first[name]], [second.get(name, 0)]) > target]
    jobs = {name: job_costs(configs) for name, configs in committed_configs(scale, long).items() if configs}
    # an experiment whose second stage has no committed runs: its first stage's stacks stand in for them
    return {name: (sweep_of(costs, False), sweep_of(costs, any(seed >= SECOND_SEED for *_, seed in costs)))
            for name, costs in jobs.items()}


def plan(names: list[str], scale: str, cores: int, confirmatory: bool = True) -> list[Unit]:
    """`make reproduce`'s units for these experiments on this many cores, from the last reproduction's times."""
    first, second = stage_seconds(timing_log(scale))
    first = {name: s for name, s in first.items() if name in names}
    second = {name: s for name, s in second.items() if name in names and confirmatory}
    sweeps = splittable(names, first, second, cores, scale)
    return plan_units(names, first, second, shard_counts(first, second, cores, sweeps), sweeps, confirmatory)


CORES = (2, 4, 8, 16)


def simulation_table(scale: str) -> str:
    """The two phases and the plan on 2-16 cores, simulated on the last reproduction's logged times."""
    first, second = stage_seconds(timing_log(scale))
    names = sorted(first)
    sweeps = splittable(names, first, second, max(CORES), scale)
    work = sum(first.values()) + sum(second.values())
    rows = ["| cores | core-s | ideal: core-s / cores | two phases | plan | plan / ideal | shards |",
            "|---:|---:|---:|---:|---:|---:|---|"]
    for cores in CORES:
        counts = shard_counts(first, second, cores, sweeps)
        old = makespan(two_phase_units(first, second), cores)
        new = makespan(plan_units(names, first, second, counts, sweeps), cores)
        split = ", ".join(f"{name} {n}" for name, n in counts.items() if n > 1) or "none"
        rows.append(f"| {cores} | {work:,} | {work / cores:,.0f} | {old:,.0f} | {new:,.0f} | {new / (work / cores):.2f}"
                    f" | {split} |")
    return "\n".join(rows)
