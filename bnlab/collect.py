"""Read run directories from disk into tidy pandas tables; wandb is never needed. The public way in:

    from bnlab import collect
    runs = collect.load(["results/runs/cpu/fig1"])      # sweep folders or run folders, any mix
    curve = collect.metrics(runs.path.iloc[0])          # one row per evaluation
    acts = collect.activations(runs.path.iloc[0])       # one row per probe and hidden layer

`runs(sweep_dir)`: one row per run directory, with the flattened config (`optim.lr`, `norm.name`, ...),
the summary (status, accuracies, steps/s, ...), `job_overrides` (the job's overrides as Hydra saved them) and
`path`. A directory without a readable summary is a run that was interrupted and is reported as `incomplete`,
never dropped.
"""

import json
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from bnlab.config import flatten
from bnlab.runlog import read_jsonl


def runs(sweep_dir: str | Path) -> pd.DataFrame:
    rows = []
    for cfg_path in sorted(Path(sweep_dir).glob("*/config.yaml")):
        run_dir = cfg_path.parent
        row = flatten(OmegaConf.to_container(OmegaConf.load(cfg_path)))  # type: ignore[arg-type]
        row = {k: v for k, v in row.items() if k != "claims" and not k.startswith("claims.")}
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            summary = {"status": "incomplete"}
        if "fused" in summary:  # the stack size's earlier name
            summary["stack_size"] = summary.pop("fused")
        row.update({f"summary.{k}" if k in row else k: v for k, v in summary.items()})
        overrides = run_dir / ".hydra" / "overrides.yaml"  # the job's command-line overrides, as Hydra saved them
        row["job_overrides"] = tuple(OmegaConf.load(overrides)) if overrides.is_file() else None
        row["path"] = str(run_dir)
        rows.append(row)
    return pd.DataFrame(rows)


def load(paths) -> pd.DataFrame:
    """`runs` of every path given: a run directory (it holds config.yaml) or a folder of them."""
    tables = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            t = runs(p.parent)
            tables.append(t[t.path == str(p)])
        else:
            tables.append(runs(p))
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True).drop_duplicates("path") if tables else pd.DataFrame()


def metrics(run_path: str | Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(Path(run_path) / "metrics.jsonl"))


def activations(run_path: str | Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(Path(run_path) / "activations.jsonl"))


def probes(run_path: str | Path) -> pd.DataFrame:
    """ICS and landscape probe rows (bnlab.probes), one per probe, measured before that step's update."""
    return pd.DataFrame(read_jsonl(Path(run_path) / "probes.jsonl"))
