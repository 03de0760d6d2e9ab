"""Plot any runs, grouped by any config keys: the figures an ad-hoc sweep never gets from the report.

  python -m bnlab.plot curves results/runs/cpu/adhoc --by norm.name --metric test_acc
  python -m bnlab.plot lr results/runs/cpu/lr_sweep_mlp --by norm.name data.name --metric final_test_acc
  python -m bnlab.plot percentiles results/runs/cpu/fig1 --by norm.name optim.lr --layer 2

Arguments are sweep folders or run folders (any mix). `curves`: a metric against steps, median and min-max
over the runs of each group; `lr`: a summary value against the learning rate, one line per group; `percentiles`:
the 15/50/85th percentiles of a hidden unit's input over training, one panel per group (its first seed).
The PNG and PDF go to --out, else to plot_<kind>.png|pdf beside the runs: in the folder that holds every path given
(a single run folder's parent), never the current directory.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bnlab import plots, runlog


def label(keys: list[str], values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


def colored_groups(runs: pd.DataFrame, by: list[str]):
    """(color, key, runs) for each group of runs, colors spread over viridis."""
    groups = list(runs.groupby(by))
    colors = plots.plt.cm.viridis(np.linspace(0, 0.9, max(1, len(groups))))
    return [(color, key, g) for color, (key, g) in zip(colors, groups, strict=False)]


def curves(runs: pd.DataFrame, by: list[str], metric: str):
    fig, ax = plots.subplots(1, width=5.0, height=3.4)
    for color, key, g in colored_groups(runs, by):
        cs = [m.dropna(subset=[metric]) for m in map(runlog.metrics, g.path) if metric in m]
        plots.band(ax[0, 0], cs, "step", metric, color, f"{label(by, key)} (n={len(cs)})")
    ax[0, 0].set(xlabel="step", ylabel=metric.replace("_", " "))
    ax[0, 0].legend(fontsize=7, loc="best")
    return fig


def lr_plot(runs: pd.DataFrame, by: list[str], metric: str):
    fig, ax = plots.subplots(1, width=5.0, height=3.4)
    for color, key, g in colored_groups(runs, by):
        plots.errorbar(ax[0, 0], g.groupby("optim.lr")[metric], color, label(by, key))
    ax[0, 0].set(xscale="log", xlabel="learning rate", ylabel=metric.replace("_", " "))
    ax[0, 0].legend(fontsize=7, loc="best")
    return fig


def percentiles(runs: pd.DataFrame, by: list[str], layer: int, unit: int = 0):
    groups = list(runs.groupby(by))
    fig, ax = plots.subplots(min(4, len(groups)), -(-len(groups) // 4), width=3.2, height=2.6, sharey=True)
    for a, (key, g) in zip(ax.flat, groups, strict=False):
        acts = runlog.activations(g.sort_values("seed").path.iloc[0])
        acts = acts[acts.layer == layer]
        for p, style in ((85, "--"), (50, "-"), (15, ":")):
            a.plot(acts.step, acts[f"u{unit}_p{p}"], style, color="k", label=f"{p}th")
        a.set(title=f"{label(by, key)}, seed {int(g.seed.min())}", xlabel="step",
              ylabel=f"layer {layer}, unit {unit} input")
    ax.flat[0].legend(fontsize=7)
    for a in ax.flat[len(groups):]:
        a.set_visible(False)
    return fig


def beside_the_runs(paths: list[Path], kind: str) -> Path:
    """plot_<kind> in the folder that holds every path given; beside a lone run folder, not among its files."""
    folder = Path(os.path.commonpath([p.resolve() for p in paths]))
    if (folder / runlog.CONFIG).is_file():
        folder = folder.parent
    return folder / f"plot_{kind}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("curves", "lr", "percentiles"))
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders or run folders")
    parser.add_argument("--by", nargs="+", default=["norm.name"], help="config keys that split the runs")
    parser.add_argument("--metric", default=None, help="curves: a metrics.jsonl column (test_acc); lr: a "
                        "summary value (final_test_acc)")
    parser.add_argument("--layer", type=int, default=0, help="percentiles: the hidden layer (0-based)")
    parser.add_argument("--out", type=Path, default=None, help="where the PNG (and PDF) go (default: "
                        "plot_<kind> beside the runs)")
    args = parser.parse_args(argv)
    runs = runlog.load(args.paths)
    if not len(runs):
        raise SystemExit(f"[bnlab] no run directories under {', '.join(map(str, args.paths))}")
    missing = [k for k in args.by if k not in runs]
    if missing:
        raise SystemExit(f"[bnlab] no config key {', '.join(missing)} in these runs; keys look like optim.lr")
    if args.kind == "curves":
        fig = curves(runs, args.by, args.metric or "test_acc")
    elif args.kind == "lr":
        fig = lr_plot(runs, args.by, args.metric or "final_test_acc")
    else:
        fig = percentiles(runs, args.by, args.layer)
    out = args.out.with_suffix("") if args.out else beside_the_runs(args.paths, args.kind)
    print(f"[bnlab] {len(runs)} runs -> {plots.save(fig, out)}")


if __name__ == "__main__":
    main()
