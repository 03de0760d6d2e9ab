"""A sweep-level progress line for a long reproduction: runs done of all the jobs, elapsed, estimated time left.

  python -m bnlab.progress [--scale cpu] [--every 60]     prints a line every minute until every job is done
  python -m bnlab.progress --once                         one line now

A run counts as done once its summary.json exists (finished, diverged or failed). The estimate extrapolates the
rate of the runs done since this process started.
"""

import argparse
import time
from pathlib import Path

from bnlab.registration import confirmatory_overrides, load
from bnlab.sweeps import experiment_names, runs_root, sweep_jobs


def totals(scale: str, overrides: list[str] = ()) -> tuple[Path, int]:
    """Where the scale's runs go and how many jobs all experiments' sweeps have (a confirmatory sweep: its first
    seeds, at the frozen rates where the experiment trains only those)."""
    stage = next((o.split("=", 1)[1] for o in overrides if o.startswith("stage=")), "exploratory")
    frozen = load(scale) if stage == "confirmatory" else None
    jobs = [sweep_jobs(name, scale, [*overrides, *confirmatory_overrides(name, scale, frozen)])[0]
            for name in experiment_names()]
    return runs_root(scale, stage, overrides), sum(len(j) for j in jobs)


def done(root: Path) -> int:
    return sum(1 for _ in root.glob("*/*/summary.json"))


def line(n_done: int, total: int, elapsed: float, rate: float | None) -> str:
    left = f", about {(total - n_done) / rate / 60:.0f} min left" if rate else ""
    return f"[bnlab] {n_done} / {total} runs done, {elapsed / 60:.0f} min elapsed{left}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between lines")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides, as given to the sweeps (out_root=...)")
    args = parser.parse_args()
    root, total = totals(args.scale, args.overrides)
    start, at_start = time.monotonic(), done(root)
    while True:
        n, elapsed = done(root), time.monotonic() - start
        rate = (n - at_start) / elapsed if n > at_start and elapsed > 0 else None
        print(line(min(n, total), total, elapsed, rate), flush=True)
        if args.once or n >= total:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
