"""Helpers that experiment analyses share: picking learning rates fairly, reading curves, steps-to-target."""

import math

import numpy as np
import pandas as pd

from bnlab import collect
from bnlab.runlog import DONE

CHANCE = 0.1  # ten classes: a diverged run scores as a guess when learning rates are ranked


def done(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.status.isin(DONE)] if len(runs) else runs


def score(runs: pd.DataFrame) -> pd.Series:
    """Final test accuracy, with diverged runs at chance: the quantity learning rates are ranked by."""
    return runs.final_test_acc.astype(float).fillna(CHANCE).where(runs.status == "finished", CHANCE)


def best_lr(runs: pd.DataFrame, arm: str | list[str]) -> dict:
    """Each arm's own best learning rate: highest median score over seeds (ties go to the smaller rate)."""
    med = runs.assign(score=score(runs)).groupby([*np.atleast_1d(arm), "optim.lr"]).score.median()
    med = med.reset_index().sort_values("optim.lr")
    keys = list(np.atleast_1d(arm))
    best = med.loc[med.groupby(keys).score.idxmax()]
    return {(r[keys[0]] if len(keys) == 1 else tuple(r[k] for k in keys)): r["optim.lr"]
            for _, r in best.iterrows()}


def steps_to(curve: pd.DataFrame, target: float, column: str = "test_acc") -> float:
    """First logged step at which `column` reaches target; inf if never."""
    hit = curve[curve[column] >= target]
    return float(hit.step.iloc[0]) if len(hit) else math.inf


def value_at(curve: pd.DataFrame, step: int, column: str = "test_acc") -> float:
    row = curve[curve.step == step]
    return float(row[column].iloc[0]) if len(row) else math.nan


def curves(runs: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Metrics history of each run, keyed by seed."""
    return {int(r.seed): collect.metrics(r.path) for r in runs.itertuples()}


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


def fraction_beyond(acts: pd.DataFrame, limit: float, hist_range: float) -> pd.Series:
    """Per activation row, the fraction of values with |x| > limit, from the histogram and overflow counts."""

    def one(row) -> float:
        h = np.asarray(row["hist"], dtype=float)
        edges = np.linspace(-hist_range, hist_range, len(h) + 1)
        outer = h[edges[1:] <= -limit].sum() + h[edges[:-1] >= limit].sum()  # limit should sit on a bin edge
        return (outer + row["below"] + row["above"]) / (h.sum() + row["below"] + row["above"])

    return acts.apply(one, axis=1)
