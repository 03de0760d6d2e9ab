"""What an experiment's analysis returns, and the mechanical verdict on it.

A claim's values are independent replicates: one training run (seed) each, never cells, layers or learning rates
pooled as if they were seeds. A claim measured in several cells (dataset x activation, learning rate, ...) gives
one list of replicates per cell, and its config declares before the runs how cells combine (`cells: all`, or
`cells: k` for "at least k cells").

Per cell (or for a single-cell claim):
  reproduced      every replicate meets the criterion
  not reproduced  no replicate meets it
  inconclusive    replicates on both sides
Over cells: reproduced when at least the declared number of cells is reproduced; not reproduced when no cell is
reproduced and none is inconclusive; inconclusive when no cell is reproduced and some are; partly (k of m cells)
when some cells are reproduced but fewer than declared.

A claim of `kind: check` holds by construction (it confirms the implementation); it gets the same verdict but
is reported apart and never counted as evidence.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from bnlab import plots
from bnlab.runlog import atomic_write_text

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "partly")
MIN_REPLICATES = 3


@dataclass
class Finding:
    claim: str  # a key of the experiment config's `claims`
    values: list[float] | dict[str, list[float]]  # one value per replicate; per cell: {cell: [one per replicate]}
    detail: str = ""  # what was measured, in words and numbers
    figure: str = ""  # path of the figure that shows it

    def cells(self) -> dict[str, list[float]]:
        return self.values if isinstance(self.values, dict) else {"": list(self.values)}


@dataclass
class Context:
    """What an experiment's analysis gets: its runs, its config and where to put figures and tables."""

    name: str
    cfg: DictConfig
    runs: pd.DataFrame
    out_dir: Path
    tables: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # every figure the analysis drew, for the report

    def figure_path(self, stem: str) -> Path:
        path = self.out_dir / "figures" / f"{self.name}_{stem}"
        self.figures.append(path)
        return path

    def write_table(self, stem: str, table: pd.DataFrame, caption: str) -> None:
        """A cell may hold one value per seed (a list): the CSV gets its median, min, max and n as numbers,
        the report its 'median [min, max] (n)'."""
        path = self.out_dir / "tables" / f"{self.name}_{stem}"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.with_suffix(".csv"), spread_out(table).to_csv(index=False))
        shown = table.copy()
        for col in per_seed_columns(table):
            shown[col] = table[col].map(plots.median_range)
        self.tables.append(f"**{caption}** (`{path.with_suffix('.csv').relative_to(self.out_dir)}`)\n\n"
                           + shown.to_markdown(index=False))


def per_seed_columns(table: pd.DataFrame) -> list:
    return [c for c in table.columns if table[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any()]


def spread_out(table: pd.DataFrame) -> pd.DataFrame:
    """Each column of per-seed lists becomes four numeric columns: '<col> median', 'min', 'max', 'n'."""
    out, spread = pd.DataFrame(index=table.index), per_seed_columns(table)
    for col in table.columns:
        if col not in spread:
            out[col] = table[col]
            continue
        values = table[col].map(lambda v: np.asarray(measured(list(np.atleast_1d(v))), dtype=float))
        for name, fn in (("median", np.median), ("min", np.min), ("max", np.max)):
            out[f"{col} {name}"] = values.map(lambda v, fn=fn: float(fn(v)) if len(v) else np.nan)
        out[f"{col} n"] = values.map(len)
    return out


def passes(value: float, threshold: float, direction: str) -> bool:
    return value >= threshold if direction == "ge" else value <= threshold


def measured(values: list[float]) -> list[float]:
    """The replicates that were measured (NaN: the quantity does not exist for that run, e.g. 0/0)."""
    return [v for v in values if v is not None and not math.isnan(v)]


def verdict(values: list[float], threshold: float, direction: str, tie: float = 0.0) -> str:
    """The verdict on one cell's replicates; a tie (within tie x |threshold| of it) leaves a cell inconclusive."""
    vals = measured(values)
    if not vals:
        return "not measured"
    clear = [not tie or abs(v - threshold) > tie * abs(threshold) for v in vals]  # off the tie band
    passed = sum(passes(v, threshold, direction) and c for v, c in zip(vals, clear, strict=True))
    failed = sum(not passes(v, threshold, direction) and c for v, c in zip(vals, clear, strict=True))
    return "reproduced" if passed == len(vals) else "not reproduced" if failed == len(vals) else "inconclusive"


def cells_needed(rule: str | int, m: int) -> int:
    """How many of m cells must be reproduced: `all`, or an integer k (at least k; never more than m)."""
    return m if str(rule) == "all" else min(int(rule), m)


def claim_verdict(finding: Finding, threshold: float, direction: str, rule: str | int = "all",
                  tie: float = 0.0) -> tuple[str, str]:
    """The claim's verdict and, for a claim over several cells, 'k of m cells' (k reproduced)."""
    per_cell = [verdict(v, threshold, direction, tie) for v in finding.cells().values()]
    per_cell = [v for v in per_cell if v != "not measured"]
    if not per_cell:
        return "not measured", ""
    if not isinstance(finding.values, dict):
        return per_cell[0], ""
    k, m = per_cell.count("reproduced"), len(per_cell)
    cells = f"{k} of {m} cells"
    if k >= cells_needed(rule, m):
        return "reproduced", cells
    if k == 0:
        return ("inconclusive" if "inconclusive" in per_cell else "not reproduced"), cells
    return "partly", cells


def replicates(finding: Finding) -> int:
    """The fewest measured replicates in any cell that was measured at all."""
    counts = [n for n in (len(measured(v)) for v in finding.cells().values()) if n]
    return min(counts) if counts else 0

