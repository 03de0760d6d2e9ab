"""What an experiment's analysis returns, and the mechanical verdict on it (docs/method.md says why so).

A claim's values are independent replicates: one training run (seed) each, never cells, layers or learning rates
pooled as if they were seeds. A claim measured in several cells (dataset x activation, learning rate, ...) gives
one list of replicates per cell.

Per cell, each seed gives one paired effect on the claim's scale (`effect: difference`, or `ratio`: its natural log).
The cell's interval is the 95% t-interval of the mean effect, widened on both sides by the claim's resolution delta:
  reproduced      the widened interval lies wholly on the claim's side of its threshold
  not reproduced  wholly on the other side
  inconclusive    it straddles the threshold
  not testable    the quantity does not exist for some replicate (NaN, a baseline that never reached its target,
                  ...), fewer than two replicates, or an "alike" claim whose contrast arm passes too
The threshold is the claim's magnitude: MAGNITUDE_SHARE of the paper's effect where the paper gives one. A claim
with a null ("no effect") also gets a direction verdict: the same interval against the null.

Over cells, as declared before the runs: `all` is a conjunction (reproduced only if every cell is; not reproduced
if any cell is; otherwise inconclusive), `any` reproduced if some cell is, and an integer k at least k cells.
"holds in k of m cells" is a description, never a verdict.

A claim of `kind: check` holds by construction (it confirms the implementation); it gets the same verdict but
is reported apart and never counted as evidence.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import stats

from bnlab import plots
from bnlab.config import ConfigError
from bnlab.runlog import atomic_write_text

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable")
MAGNITUDE_SHARE = 0.5  # of the paper's effect, on the claim's scale (a ratio: the square root of the paper's)
CONFIDENCE = 0.95
FIRST_SEEDS = 5  # a confirmatory cell starts with this many fresh seeds ...
MORE_SEEDS = 5  # ... and an inconclusive one gets this many more, once; its verdict is then final
SIGNIFICANT = 6  # digits a table's CSV keeps: past them a float is arithmetic noise (0.11229999999999996)


@dataclass
class Finding:
    claim: str  # a key of the experiment config's `claims`
    values: list[float] | dict[str, list[float]]  # one value per replicate; per cell: {cell: [one per replicate]}
    detail: str = ""  # what was measured, in words and numbers
    figure: str = ""  # path of the figure that shows it
    untestable: dict[str, str] = field(default_factory=dict)  # cell ("" for a single-cell claim) -> why not testable
    contrast: list[float] | dict[str, list[float]] | None = None  # an "alike" claim: the arm that must fail it

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

    def write_table(self, stem: str, table: pd.DataFrame, caption: str, infinite: str = "infinite") -> None:
        """A cell may hold one value per seed (a list): the CSV gets its median, min, max and n as numbers,
        the report its 'median [min, max] (n)'. The CSV holds numbers only: floats to SIGNIFICANT digits, and an
        infinity (a target never reached, ...) left empty, with a column beside it saying where: `infinite` names
        what an infinity means in this table ('never reached')."""
        path = self.out_dir / "tables" / f"{self.name}_{stem}"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.with_suffix(".csv"), for_csv(spread_out(table, infinite)).to_csv(index=False))
        shown = table.copy()
        for col in per_seed_columns(table):
            shown[col] = table[col].map(plots.median_range)
        self.tables.append(f"**{caption}** (`{path.with_suffix('.csv').relative_to(self.out_dir)}`)\n\n"
                           + shown.to_markdown(index=False))


def per_seed_columns(table: pd.DataFrame) -> list:
    return [c for c in table.columns if table[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any()]


def is_infinite(v) -> bool:
    return isinstance(v, (float, np.floating)) and math.isinf(v)


def spread_out(table: pd.DataFrame, infinite: str = "infinite") -> pd.DataFrame:
    """Each column of per-seed lists becomes four numeric columns: '<col> median', 'min', 'max', 'n'. A column
    with an infinity gets one more beside it, since the CSV leaves infinities empty: '<col> n <infinite>' (how many
    replicates are infinite) for per-seed lists, '<col> <infinite>' (True where the value is) otherwise."""
    out, spread = pd.DataFrame(index=table.index), per_seed_columns(table)
    for col in table.columns:
        if col not in spread:
            out[col] = table[col]
            if table[col].map(is_infinite).any():
                out[f"{col} {infinite}"] = table[col].map(is_infinite)
            continue
        values = table[col].map(lambda v: np.asarray(measured(list(np.atleast_1d(v))), dtype=float))
        for name, fn in (("median", np.median), ("min", np.min), ("max", np.max)):
            out[f"{col} {name}"] = values.map(lambda v, fn=fn: float(fn(v)) if len(v) else np.nan)
        out[f"{col} n"] = values.map(len)
        infinities = values.map(lambda v: int(np.isinf(v).sum()))
        if infinities.any():
            out[f"{col} n {infinite}"] = infinities
    return out


def for_csv(table: pd.DataFrame) -> pd.DataFrame:
    """Every float to SIGNIFICANT digits, an infinity as NaN (an empty CSV field; spread_out says where)."""
    def number(v):
        if not isinstance(v, (float, np.floating)) or not math.isfinite(v):
            return np.nan if is_infinite(v) else v
        return float(f"{v:.{SIGNIFICANT}g}")

    columns = [col.map(number) if col.dtype.kind in "fO" else col for _, col in table.items()]
    return pd.concat(columns, axis=1) if columns else table


def measured(values: list[float]) -> list[float]:
    """The replicates that are numbers (NaN: the quantity does not exist for that run, e.g. 0/0)."""
    return [v for v in values if v is not None and not math.isnan(v)]


def magnitude_threshold(paper_effect: float, no_effect: float, effect: str, share: float = MAGNITUDE_SHARE) -> float:
    """The value `share` of the way from no effect to the paper's effect: on a log scale for a ratio."""
    if effect == "ratio":
        return no_effect * (paper_effect / no_effect) ** share
    return no_effect + share * (paper_effect - no_effect)


@dataclass(frozen=True)
class Criterion:
    """What a claim's config fixes before the runs, as the verdict reads it."""

    threshold: float
    direction: str  # "ge" or "le": the claim's side of the threshold and of the null
    resolution: float  # delta, on the effect's scale
    effect: str = "difference"
    no_effect: float | None = None
    cells: str = "all"
    contrast: bool = False

    @classmethod
    def of(cls, claim) -> "Criterion":
        """The criterion a claim's config declares; a config that does not fix one is an error."""
        if (claim.threshold is None) == (claim.get("paper_effect") is None):
            raise ConfigError(f"claim '{claim.statement[:60]}...': give a threshold or a paper_effect, not both")
        if claim.get("paper_effect") is not None and claim.get("no_effect") is None:
            raise ConfigError("a claim with a paper_effect needs no_effect (0 for a difference, 1 for a ratio)")
        if not claim.resolution > 0 or not str(claim.setup).strip():
            raise ConfigError("every claim declares a resolution > 0 and its setup")
        threshold = claim.threshold
        if claim.get("paper_effect") is not None:
            threshold = magnitude_threshold(claim.paper_effect, claim.no_effect, str(claim.effect))
        no_effect = None if claim.get("no_effect") is None else float(claim.no_effect)
        return cls(float(threshold), str(claim.direction), float(claim.resolution), str(claim.effect), no_effect,
                   str(claim.cells), bool(claim.contrast))

    def scaled(self, value: float) -> float:
        return math.log(value) if self.effect == "ratio" else value


@dataclass(frozen=True)
class Cell:
    """One cell's verdicts and the widened interval behind them, on the measured scale."""

    verdict: str
    direction: str | None  # against the null; None where the claim has none
    n: int
    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    why: str = ""  # why not testable
    direction_read: "Cell | None" = None  # two stages: the other seeds' cell, where the direction verdict read it


def interval(values: list[float], c: Criterion) -> tuple[float, float, float]:
    """(mean, low, high) on the effect's scale: the t-interval of the mean widened by the resolution."""
    x = np.array([c.scaled(v) for v in values], dtype=float)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half - c.resolution), float(x.mean() + half + c.resolution)


def side(low: float, high: float, bound: float, direction: str) -> str:
    """Where the interval lies against a bound, for a claim on the `direction` side of it."""
    above, below = low > bound, high < bound
    if not (above or below):
        return "inconclusive"
    return "reproduced" if above == (direction == "ge") else "not reproduced"


def failing_side(v: float, c: Criterion) -> bool:
    """Is a replicate with no finite value (a run that never reached its target: infinite steps; a ratio of 0) past
    the claim's threshold on the failing side?"""
    return (v == math.inf and c.direction == "le") or ((v == -math.inf or (c.effect == "ratio" and v == 0))
                                                       and c.direction == "ge")


def unmeasurable(values: list[float], c: Criterion) -> str:
    """Why these replicates give no interval ('' if they do)."""
    bad = [v for v in values if v is None or not math.isfinite(v) or (c.effect == "ratio" and v <= 0)]
    if bad:
        return f"{len(bad)} of {len(values)} replicates not measurable ({', '.join(sorted({str(v) for v in bad}))})"
    return "fewer than 2 replicates" if len(values) < 2 else ""


def judge_cell(values: list[float], c: Criterion, why: str = "") -> Cell:
    if not why and len(values) >= 2 and all(failing_side(v, c) for v in values):  # every seed censored past it
        direction = None if c.no_effect is None else "not reproduced"
        return Cell("not reproduced", direction, len(values), values[0], values[0], values[0])
    why = why or unmeasurable(values, c)
    if why:
        return Cell("not testable", None if c.no_effect is None else "not testable", len(values), why=why)
    mean, low, high = interval(values, c)
    back = (lambda v: math.exp(v)) if c.effect == "ratio" else (lambda v: v)  # noqa: E731
    direction = None if c.no_effect is None else side(low, high, c.scaled(c.no_effect), c.direction)
    return Cell(side(low, high, c.scaled(c.threshold), c.direction), direction, len(values),
                back(mean), back(low), back(high))


def two_stage(first: Cell, both: Cell | None) -> Cell:
    """The first seeds' verdicts, each (magnitude and direction apart) replaced by the verdict on all seeds only
    where it was inconclusive; the interval shown is the one the magnitude verdict read."""
    if both is None:
        return first
    magnitude = both if first.verdict == "inconclusive" else first
    direction_cell = both if first.direction == "inconclusive" else first
    return replace(magnitude, direction=direction_cell.direction,
                   direction_read=None if direction_cell is magnitude else direction_cell)


def combine(verdicts: Sequence[str | None], rule: str = "all") -> str:
    """The claim's verdict from its cells' verdicts, by the rule declared before the runs."""
    if not verdicts:
        return "not testable"
    if all(v == "not testable" for v in verdicts):
        return "not testable"
    passed, failed = verdicts.count("reproduced"), verdicts.count("not reproduced")
    need = len(verdicts) if rule == "all" else 1 if rule == "any" else min(int(rule), len(verdicts))
    if passed >= need:
        return "reproduced"
    return "not reproduced" if len(verdicts) - failed < need else "inconclusive"


def holds_in(cells: dict[str, Cell]) -> str:
    """A description, never a verdict: 'holds in k of m cells'."""
    return f"holds in {sum(c.verdict == 'reproduced' for c in cells.values())} of {len(cells)} cells"


@dataclass(frozen=True)
class Judgement:
    verdict: str  # magnitude (the threshold), over cells by the declared rule
    direction: str | None  # against the null, over cells by the same rule; None where the claim has none
    cells: dict[str, Cell]


def judge(finding: "Finding", c: Criterion, more: "Finding | None" = None) -> Judgement:
    """A claim's verdicts. `more`: the same claim measured on the first seeds and the extra ones together, which
    decides what the first seeds left inconclusive (the two-stage rule of the confirmatory runs)."""
    cells = {}
    for cell, values in finding.cells().items():
        first = judge_cell(values, c, finding.untestable.get(cell, ""))
        both = judge_cell(more.cells()[cell], c, more.untestable.get(cell, "")) \
            if more is not None and cell in more.cells() else None
        cells[cell] = two_stage(first, both)
    for cell, why in finding.untestable.items():
        cells.setdefault(cell, judge_cell([], c, why))
    if c.contrast:
        cells = contrasted(cells, finding, c, more)
    verdict = combine([x.verdict for x in cells.values()], c.cells)
    direction = None if c.no_effect is None else combine([x.direction for x in cells.values()], c.cells)
    return Judgement(verdict, direction, cells)


def contrasted(cells: dict[str, Cell], finding: "Finding", c: Criterion, more: "Finding | None") -> dict[str, Cell]:
    """An "alike" claim's cells, each not testable where the contrast arm's same cell does not fail the same
    criterion (it does not discriminate there); a cell that fails plainly stays as it is."""
    plain = replace(c, contrast=False)
    theirs = judge(Finding(finding.claim, finding.contrast or []), plain,
                   None if more is None else Finding(finding.claim, more.contrast or []))
    out = {}
    for cell, mine in cells.items():
        other = theirs.cells.get(cell, theirs.cells.get(""))
        if mine.verdict in ("reproduced", "inconclusive") and (other is None or other.verdict != "not reproduced"):
            why = f"the contrast arm reads {other.verdict if other else 'nothing'} under the same criterion: " \
                  "it does not discriminate"
            mine = replace(mine, verdict="not testable", direction=None if c.no_effect is None else "not testable",
                           why=why)
        out[cell] = mine
    return out


def chance_rate(first: int = FIRST_SEEDS, more: int = MORE_SEEDS, delta_over_sd: float = 0.0,
                trials: int = 200_000, seed: int = 0) -> float:
    """How often a cell with no effect at all (normal replicates centred on the null, a sign claim whose threshold
    is the null) reads reproduced under the two-stage rule, by simulation; `delta_over_sd`: the resolution in units
    of the replicates' standard deviation."""
    x = np.random.default_rng(seed).standard_normal((trials, first + more))

    def bounds(n: int) -> tuple[np.ndarray, np.ndarray]:
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * x[:, :n].std(1, ddof=1) / math.sqrt(n) + delta_over_sd
        return x[:, :n].mean(1) - half, x[:, :n].mean(1) + half

    low, high = bounds(first)
    straddles = (low <= 0) & (high >= 0)
    return float(np.mean((low > 0) | (straddles & (bounds(first + more)[0] > 0))))
