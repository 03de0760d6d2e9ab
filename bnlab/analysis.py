"""Helpers that experiment analyses share: picking learning rates fairly, reading curves, steps-to-target."""

import json
import math
from contextlib import contextmanager

import numpy as np
import pandas as pd

from bnlab import config, runlog
from bnlab.runlog import DONE

CHANCE = 0.1  # ten classes: a diverged run scores as a guess when learning rates are ranked


def done(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.status.isin(DONE)] if len(runs) else runs


def score(runs: pd.DataFrame) -> pd.Series:
    """Final test accuracy, with diverged runs at chance: the quantity learning rates are ranked by."""
    return runs.final_test_acc.astype(float).fillna(CHANCE).where(runs.status == "finished", CHANCE)


# Best rates chosen on the exploratory seeds, frozen for the confirmatory ones: `chosen_rates` sets which.
_rates: dict = {"frozen": None, "record": None}


@contextmanager
def chosen_rates(frozen: dict | None = None, record: dict | None = None):
    """Within it, `best_lr` returns the rates in `frozen` (selection -> {arm: rate}) instead of choosing on the
    runs it is given, or records its choices in `record`: the confirmatory seeds never pick their own rate."""
    _rates.update(frozen=frozen, record=record)
    try:
        yield
    finally:
        _rates.update(frozen=None, record=None)


def selection(runs: pd.DataFrame, arm: str | list[str]) -> str:
    """Which choice of rate this is: the arm's column(s) and the config values every run given shares (what
    names the same choice in the exploratory and the confirmatory runs)."""
    keys = config.flat_schema_values()
    shared = {c: plain(runs[c].iloc[0]) for c in sorted(runs.columns)
              if c in keys and c != "optim.lr" and config.in_identity(c) and runs[c].nunique() == 1}
    return json.dumps([list(np.atleast_1d(arm)), shared], default=str)


def plain(value):
    """A config value as JSON writes it alike whichever dtype pandas gave its column (2 and 2.0 are one rate)."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


class RateNotFrozen(KeyError):
    """A confirmatory analysis asked for a choice the registration did not freeze."""


def frozen_choice(key: str, choose):
    """What `choose()` picks on the exploratory runs (recorded under `key`), or, within
    `chosen_rates(frozen=...)`, what it picked there: a choice the confirmatory seeds never make."""
    if _rates["frozen"] is not None:
        if key not in _rates["frozen"]:  # the selection differs from every exploratory one: name the arm only
            raise RateNotFrozen(f"no choice for {', '.join(json.loads(key)[0])} among these runs")
        return _rates["frozen"][key]
    value = choose()
    if _rates["record"] is not None:
        _rates["record"][key] = value
    return value


def best_lr(runs: pd.DataFrame, arm: str | list[str]) -> dict:
    """Each arm's own best learning rate: highest median score over seeds (ties go to the smaller rate); within
    `chosen_rates(frozen=...)` the rate chosen on the exploratory seeds."""
    keys = list(np.atleast_1d(arm))

    def choose() -> list:
        med = runs.assign(score=score(runs)).groupby([*keys, "optim.lr"]).score.median()
        best = med.reset_index().sort_values("optim.lr").pipe(lambda m: m.loc[m.groupby(keys).score.idxmax()])
        return sorted([[plain(r[keys[0]]) if len(keys) == 1 else [plain(r[k]) for k in keys], float(r["optim.lr"])]
                       for _, r in best.iterrows()], key=str)

    return {(tuple(a) if isinstance(a, list) else a): lr for a, lr in frozen_choice(selection(runs, arm), choose)}


def steps_to(curve: pd.DataFrame, target: float, column: str = "test_acc") -> float:
    """Steps at which `column` first reaches target, interpolated linearly between the evaluation before and the
    first at or above it (so the evaluation cadence does not quantise it); inf if never."""
    c = curve.dropna(subset=[column])
    hit = np.flatnonzero(c[column].to_numpy() >= target)
    if not len(hit):
        return math.inf
    i = hit[0]
    if i == 0:
        return float(c.step.iloc[0])
    (s0, s1), (a0, a1) = c.step.iloc[i - 1:i + 1], c[column].iloc[i - 1:i + 1]
    return float(s0 + (s1 - s0) * ((target - a0) / (a1 - a0)))


def value_at(curve: pd.DataFrame, step: int, column: str = "test_acc") -> float:
    row = curve[curve.step == step]
    return float(row[column].iloc[0]) if len(row) else math.nan


def curves(runs: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Metrics history of each run, keyed by seed."""
    return {int(r.seed): runlog.metrics(r.path) for r in runs.itertuples()}


def select(runs: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows whose config matches every key=value given; keys use '__' for '.' (optim__lr=0.1)."""
    mask = pd.Series(True, index=runs.index)
    for key, value in where.items():
        col = key.replace("__", ".")
        mask &= np.isclose(runs[col], value) if isinstance(value, float) else runs[col] == value
    return runs[mask]


def ratio(a: float, b: float) -> float:
    """a / b with infinities handled: never reaching a target counts as infinitely many steps."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if math.isinf(b):
        return 0.0
    return math.inf if math.isinf(a) else a / b


def paired_steps_ratio(runs: pd.DataFrame, arm: str, reference: str, target: float,
                       column: str = "test_acc", arm_lr: float | None = None,
                       reference_lr: float | None = None) -> list[float]:
    """Steps for `arm` to reach target over steps for `reference` (norm names), one ratio per seed; each at the
    learning rate given, or runs must hold one run per arm and seed. A run that never reaches it takes infinitely
    long."""
    at = lambda lr: {} if lr is None else {"optim__lr": lr}  # noqa: E731
    a, b = curves(select(runs, norm__name=arm, **at(arm_lr))), curves(select(runs, norm__name=reference,
                                                                             **at(reference_lr)))
    return [ratio(steps_to(a[s], target, column), steps_to(b[s], target, column)) for s in sorted(set(a) & set(b))]


def seed_pairs(runs: pd.DataFrame, arm: str, reference: str) -> list[tuple]:
    """(run of arm, run of reference) for every seed that has both (runs: one run per arm and seed)."""
    out = []
    for _, g in runs.groupby("seed"):
        a, b = select(g, norm__name=arm), select(g, norm__name=reference)
        if len(a) and len(b):
            out.append((a.iloc[0], b.iloc[0]))
    return out


def layer_cells(runs: pd.DataFrame, arm: str, reference: str, value, combine=lambda a, b: a / b) -> dict:
    """{'layer k': [combine(value(arm)[k], value(reference)[k]) per seed]}: value returns a dict by (0-based)
    layer; each layer is a cell, each seed a replicate."""
    cells: dict[str, list[float]] = {}
    for a, b in seed_pairs(runs, arm, reference):
        va, vb = value(a), value(b)
        for k in sorted(set(va) & set(vb)):
            cells.setdefault(f"layer {int(k) + 1}", []).append(combine(va[k], vb[k]))
    return cells


def per_seed_ratio(runs: pd.DataFrame, arm: str, reference: str, value) -> list[float]:
    """value(run of arm) / value(run of reference) paired by seed; a value that is a dict (per layer) gives each
    seed the median of its key-by-key ratios: layers summarise one replicate, they are not replicates."""
    out = []
    for a, b in seed_pairs(runs, arm, reference):
        va, vb = value(a), value(b)
        if isinstance(va, dict):
            ratios = [va[k] / vb[k] for k in va if k in vb and vb[k]]
            out.append(float(np.median(ratios)) if ratios else math.nan)
        else:
            out.append(va / vb if vb else math.nan)
    return out


def by_seed(runs: pd.DataFrame, value, **where) -> dict[int, float]:
    """seed -> value(run) of the runs matching `where` (one per seed)."""
    return {int(r.seed): value(r) for _, r in select(runs, **where).iterrows()}


def paired(a: dict[int, float], b: dict[int, float], combine=ratio) -> list[float]:
    """combine(a[seed], b[seed]) for every seed in both (`by_seed` dicts): one replicate per seed."""
    return [combine(a[s], b[s]) for s in sorted(set(a) & set(b))]


def scores_by_seed(runs: pd.DataFrame, **where) -> dict[int, float]:
    """seed -> final score (a diverged run at chance) of the runs matching `where` (one per seed)."""
    return by_seed(runs, final_score, **where)


def score_difference(runs: pd.DataFrame, a: dict, b: dict) -> list[float]:
    """Points of the runs matching a minus those matching b (dicts of `select` keys), paired by seed."""
    return paired(scores_by_seed(runs, **a), scores_by_seed(runs, **b), lambda x, y: 100 * (x - y))


def drop_beyond_control(runs: pd.DataFrame, arm: str, large: int, small: int, control: str = "none") -> list[float]:
    """(arm(large) - arm(small)) - (control(large) - control(small)) in points, paired by seed: how much more the
    arm loses going down to the small batch than the un-normalised control does."""
    drop = {n: score_difference(runs, {"norm__name": n, "trainer__batch_size": large},
                                {"norm__name": n, "trainer__batch_size": small}) for n in (arm, control)}
    return [d - c for d, c in zip(drop[arm], drop[control], strict=False)]


def fraction_beyond(acts: pd.DataFrame, limit: float, hist_range: float) -> pd.Series:
    """Per activation row, the fraction of values with |x| > limit, from the histogram and overflow counts."""

    def one(row) -> float:
        h = np.asarray(row["hist"], dtype=float)
        edges = np.linspace(-hist_range, hist_range, len(h) + 1)
        outer = h[edges[1:] <= -limit].sum() + h[edges[:-1] >= limit].sum()  # limit should sit on a bin edge
        return (outer + row["below"] + row["above"]) / (h.sum() + row["below"] + row["above"])

    return acts.apply(one, axis=1)


def final_train_loss(run) -> float:
    """A run's final training loss; a diverged run's is infinite."""
    return float(run.final_train_loss) if run.status == "finished" else math.inf


def final_score(run) -> float:
    """A run's final test accuracy; a diverged run counts as chance."""
    return float(run.final_test_acc) if run.status == "finished" else CHANCE


def probe_median(run, kind: str, column: str, first: float = 0.0, last: float = 1.0, by_layer: bool = False,
                 **where):
    """Median of a probe column over the probes between fractions `first` and `last` of training."""
    p = runlog.probes(run.path)
    if not len(p):
        return {} if by_layer else math.nan
    p = p[p.kind == kind]
    for k, v in where.items():
        p = p[p[k] == v]
    steps = run["trainer.steps"]
    p = p[(p.step >= first * steps) & (p.step <= last * steps)]
    if by_layer:
        return p.groupby("layer")[column].median().to_dict()
    return float(p[column].median())


def moment_change(run, layers=None, moment: str = "mean") -> dict:
    """Median per-step change of unit means, or with moment="var" of unit variances (Santurkar Fig. 8), per
    hidden layer over the whole run."""
    m = runlog.metrics(run.path)
    prefix = f"d{moment}_L"
    cols = [c for c in m.columns if c.startswith(prefix)]
    return {int(c[len(prefix):]): float(m[c].median()) for c in cols
            if layers is None or int(c[len(prefix):]) in layers}
