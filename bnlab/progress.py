"""A sweep-level progress line for a long reproduction: runs done of all the jobs, elapsed, estimated time left.

  python -m bnlab.progress [--scale cpu] [--every 60]     prints a line every minute until every job is done
  python -m bnlab.progress --once                         one line now

A run counts as done once its summary.json exists (finished, diverged or failed). The time left weighs each run by
its expected cost, as a sweep's own bar does: here its experiment's last sweep time in the timing log over that
sweep's runs (composing 2,000 configs to count their FLOPs would take minutes), and extrapolates the cost done per
second since this process started.
"""

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from bnlab.registration import confirmatory_overrides, load
from bnlab.sweeps import experiment_names, runs_root, sweep_jobs, sweep_seconds


def totals(scale: str, overrides: Sequence[str] = ()) -> tuple[Path, dict[str, int]]:
    """Where the scale's runs go and each experiment's count of jobs (a confirmatory sweep: its first seeds, at the
    frozen rates where the experiment trains only those)."""
    stage = next((o.split("=", 1)[1] for o in overrides if o.startswith("stage=")), "exploratory")
    frozen = load(scale) if stage == "confirmatory" else None
    jobs = {name: len(sweep_jobs(name, scale, [*overrides, *confirmatory_overrides(name, scale, frozen)])[0])
            for name in experiment_names()}
    return runs_root(scale, stage, overrides), jobs


def run_costs(jobs: dict[str, int], seconds: dict[str, int]) -> dict[str, float]:
    """Each experiment's expected seconds per run: its last sweep time (`sweeps.sweep_seconds`) over its jobs now;
    an experiment never timed costs the mean of those that were (all alike when none was)."""
    per_run = {name: seconds[name] / n for name, n in jobs.items() if name in seconds and n}
    mean = sum(per_run.values()) / len(per_run) if per_run else 1.0
    return {name: per_run.get(name, mean) for name in jobs}


def done_by_experiment(root: Path, names) -> dict[str, int]:
    """Each experiment's runs with a summary.json under root."""
    return {name: sum(1 for _ in (root / name).glob("*/summary.json")) for name in names}


def line(n_done: int, total: int, elapsed: float, seconds_left: float | None) -> str:
    left = f", about {seconds_left / 60:.0f} min left" if seconds_left is not None else ""
    return f"[bnlab] {n_done} / {total} runs done, {elapsed / 60:.0f} min elapsed{left}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between lines")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides, as given to the sweeps (out_root=...)")
    args = parser.parse_args()
    root, jobs = totals(args.scale, args.overrides)
    cost = run_costs(jobs, sweep_seconds(args.scale))
    total, total_cost = sum(jobs.values()), sum(n * cost[name] for name, n in jobs.items())

    def cost_done() -> tuple[int, float]:
        counts = {name: min(n, jobs[name]) for name, n in done_by_experiment(root, jobs).items()}
        return sum(counts.values()), sum(n * cost[name] for name, n in counts.items())

    start, (_, at_start) = time.monotonic(), cost_done()
    while True:
        (n, spent), elapsed = cost_done(), time.monotonic() - start
        rate = (spent - at_start) / elapsed if spent > at_start and elapsed > 0 else None
        print(line(n, total, elapsed, (total_cost - spent) / rate if rate else None), flush=True)
        if args.once or n >= total:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
