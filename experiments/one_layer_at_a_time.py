"""The write-up's reader: update one layer a step (block-coordinate SGD); the author: 'too slow'. Steps, wall time
and internal covariate shift to a target, against full SGD, with and without BN, on the Fig. 1 MLP."""

import math

import numpy as np
import pandas as pd

from bnlab import plots, runlog
from bnlab.analysis import by_seed, done, frozen_choice, paired, ratio, select, selection, steps_to
from bnlab.claims import Context, Finding

RULES = ("round_robin", "largest_grad")
BLOCKS = ("all", *RULES)
NAMES = {"all": "full SGD", "round_robin": "round-robin", "largest_grad": "largest gradient"}
STYLES = {"all": "-", "round_robin": "--", "largest_grad": ":"}
HEAD_ONLY = 0.9  # a rule that moves the head at 90% of steps or more leaves the hidden layers (nearly) untrained
WALL_CLOCK = ("a wall-clock criterion (flips between runs on one CPU type); as built each block step computes every "
              "gradient, so its FLOPs equal a full step's: OL_too_slow counts steps")


def time_to(curve: pd.DataFrame, target: float) -> float:
    """Training seconds (evaluation and probes excluded) to the first evaluation at target; inf if never."""
    hit = curve[curve.test_acc >= target]
    return float(hit.train_time.iloc[0]) if len(hit) else math.inf


def fastest_lr(runs: pd.DataFrame, norm: str, block: str, target: float) -> float:
    """The rate with the lowest median steps to target over seeds (ties to the smaller rate), chosen on the
    exploratory seeds (`frozen_choice`)."""

    def choose() -> float:
        best, best_steps = math.nan, math.inf
        for lr in sorted(select(runs, norm__name=norm, optim__block=block)["optim.lr"].unique()):
            steps = by_seed(runs, lambda r: steps_to(runlog.metrics(r.path), target), norm__name=norm,
                            optim__block=block, optim__lr=lr).values()
            median = float(np.median(list(steps))) if steps else math.inf
            if math.isnan(best) or median < best_steps:
                best, best_steps = lr, median
        return float(best)

    return frozen_choice(selection(runs, [f"fastest rate of {norm}, {block}"]), choose)


def compared(runs: pd.DataFrame, fn, arm: dict, reference: dict, combine=ratio) -> list[float]:
    """combine(fn(run of arm), fn(run of reference)), paired by seed (arm, reference: `select` keys)."""
    return paired(by_seed(runs, fn, **arm), by_seed(runs, fn, **reference), combine)


def mean_ics(run, layer: int) -> float:
    p = runlog.probes(run.path)
    p = p[(p.kind == "ics") & (p.layer == layer)] if len(p) else p
    return float(p.l2.mean()) if len(p) else math.nan


def chosen_shares(runs: pd.DataFrame, norm: str, block: str, lr: float) -> str:
    """How often each layer was the one moved, over the ICS probes of the runs at this rate (all seeds)."""
    chosen = [p.chosen for p in (runlog.probes(r.path) for r in select(runs, norm__name=norm, optim__block=block,
                                                                        optim__lr=lr).itertuples())
              if len(p) and "chosen" in p]
    counts = pd.concat(chosen).value_counts(normalize=True).sort_index() if chosen else pd.Series(dtype=float)
    return ", ".join(f"layer {int(k) + 1} {v:.0%}" for k, v in counts.items())


def head_moved(runs: pd.DataFrame, norm: str, block: str, lr: float, head: int) -> float:
    """The share of ICS probes (all seeds at this rate) at which the rule's chosen layer was the head (0-based
    index `head`: the number of hidden layers)."""
    chosen = [p.chosen for p in (runlog.probes(r.path) for r in select(runs, norm__name=norm, optim__block=block,
                                                                        optim__lr=lr).itertuples())
              if len(p) and "chosen" in p]
    if not chosen:
        return math.nan
    c = pd.concat(chosen)
    return float((c == head).mean())


def zero_fraction(run, layer: int) -> float:
    p = runlog.probes(run.path)
    p = p[(p.kind == "ics") & (p.layer == layer)] if len(p) else p
    return float((p.l2 == 0).mean()) if len(p) else math.nan


def at(norm: str, block: str, lr: float) -> dict:
    """The `select` keys of one arm: normaliser, block rule and learning rate."""
    return {"norm__name": norm, "optim__block": block, "optim__lr": lr}


def round_robin_deviation(runs: pd.DataFrame, norm: str, layers: list[int], lr: float) -> list[float]:
    """Per seed, the largest |fraction of ICS probes at exactly 0 - the fraction round-robin implies| over layers."""
    expected = {i: 1 - i / 4 for i in layers}  # round-robin moves a layer below hidden layer i at i of 4 steps
    return list(by_seed(runs, lambda r: max(abs(zero_fraction(r, i) - expected[i]) for i in layers),
                        **at(norm, "round_robin", lr)).values())


def cell_name(norm: str, block: str) -> str:
    return f"{plots.LABELS[norm]}, {NAMES[block]}"


def untestable_cells(runs: pd.DataFrame, norms: list[str], fast: dict, lr_ics: float, head: int, too_slow: dict,
                     less_shift: dict) -> tuple[dict, dict]:
    """Why cells of OL_too_slow and of OL_less_shift are not testable; their values with no ratio become NaN.
    Degenerate cells: a block rule that moved only the head (0-based layer `head`) has nothing below the probed
    layers moving (ICS = 0) and never trains the hidden layers; its ratios measure that, not "one layer at a time"."""
    too_slow_why = {}
    for n in norms:
        for b in RULES:
            share = head_moved(runs, n, b, fast[n, b], head)
            if share >= HEAD_ONLY:
                too_slow_why[cell_name(n, b)] = (f"degenerate: at its fastest rate the {NAMES[b]} rule moved the head "
                                                 f"in {share:.0%} of steps, so the hidden layers hardly train")
            elif any(not math.isfinite(v) for v in too_slow[cell_name(n, b)]):
                too_slow_why[cell_name(n, b)] = "a run never reached the target: no ratio exists"
    shift_why = {}
    for key, vals in less_shift.items():
        n, b = next((n, b) for n in norms for b in RULES if key.startswith(cell_name(n, b) + ","))
        if any(v == 0 or not math.isfinite(v) for v in vals):
            shift_why[key] = (f"ICS = 0: the {NAMES[b]} rule moved the head in "
                              f"{head_moved(runs, n, b, lr_ics, head):.0%} of steps at lr {lr_ics:g}, so nothing "
                              "below the probed layer moved")
            vals[:] = [math.nan if v == 0 else v for v in vals]
    for key in too_slow_why:
        too_slow[key] = [math.nan if not math.isfinite(v) else v for v in too_slow[key]]
    return too_slow_why, shift_why


def draw(ctx: Context, runs: pd.DataFrame, norms: list[str], fast: dict, lr_ics: float, target: float) -> str:
    """Test accuracy at each arm's fastest rate (row 1), ICS of the top probed layer at lr_ics (row 2)."""
    layers = list(ctx.cfg.trainer.ics_layers)
    fig, ax = plots.subplots(len(norms), nrows=2, width=3.6)
    for j, n in enumerate(norms):
        for b in BLOCKS:
            color = plots.COLORS[n]
            cs = [runlog.metrics(r.path).dropna(subset=["test_acc"]) for r in select(runs, **at(n, b, fast[n, b]))
                  .itertuples()]
            plots.band(ax[0, j], cs, "step", "test_acc", color, f"{NAMES[b]}, lr {fast[n, b]:g}",
                       linestyle=STYLES[b])
            ps = [p[(p.kind == "ics") & (p.layer == layers[-1])] for p in
                  (runlog.probes(r.path) for r in select(runs, **at(n, b, lr_ics)).itertuples()) if len(p)]
            ps = [p.assign(l2=p.l2.rolling(8, min_periods=1).mean()) for p in ps]  # round-robin's zeros smoothed
            plots.band(ax[1, j], ps, "step", "l2", color, NAMES[b], linestyle=STYLES[b])
        ax[0, j].axhline(target, color="k", lw=0.6, ls=":")
        ax[0, j].set(title=f"3 x 100 sigmoid MLP, {plots.LABELS[n]}: fastest lr", xlabel="step",
                     ylabel="test accuracy", ylim=(0.5, 1))
        ax[1, j].set(title=f"ICS, layer {layers[-1] + 1}, lr {lr_ics:g} (mean of 8 probes)", xlabel="step",
                     ylabel="||G - G'||", yscale="log")
        for a in ax[:, j]:
            a.legend(fontsize=7)
    return plots.save(fig, ctx.figure_path("accuracy_ics"))


def write_rate_table(ctx: Context, runs: pd.DataFrame, norms: list[str], fast: dict, target: float) -> None:
    """Every arm at every rate: steps and training seconds to the target, speed, final accuracy and mean ICS."""
    layers = list(ctx.cfg.trainer.ics_layers)
    steps_fn = lambda r: steps_to(runlog.metrics(r.path), target)  # noqa: E731
    time_fn = lambda r: time_to(runlog.metrics(r.path), target)  # noqa: E731
    rows = []
    for n in norms:
        for b in BLOCKS:
            for lr in sorted(runs["optim.lr"].unique()):
                sel = at(n, b, lr)
                rows.append({"norm": plots.LABELS[n], "optimiser": NAMES[b], "lr": lr,
                             "fastest": "yes" if lr == fast[n, b] else "",
                             f"steps to {target:.0%}": list(by_seed(runs, steps_fn, **sel).values()),
                             f"train s to {target:.0%}": list(by_seed(runs, time_fn, **sel).values()),
                             "steps/s": list(by_seed(runs, lambda r: float(r.steps_per_s), **sel).values()),
                             "final acc": list(by_seed(runs, lambda r: float(r.final_test_acc), **sel).values()),
                             **{f"mean ICS L{i + 1}": list(by_seed(runs, lambda r, i=i: mean_ics(r, i), **sel)
                                                           .values()) for i in layers}})
    ctx.write_table("table", pd.DataFrame(rows), "One layer at a time: steps, training time and ICS by optimiser "
                    "(diverged runs excluded; inf, an empty cell in the CSV: never reached)", infinite="never reached")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    claims = ctx.cfg.claims
    target, lr_ics = float(claims.OL_too_slow.params.target), float(claims.OL_less_shift.params.lr)
    layers = list(ctx.cfg.trainer.ics_layers)
    norms = [n for n in ("none", "batch") if n in set(runs["norm.name"])]
    fast = {(n, b): fastest_lr(runs, n, b, target) for n in norms for b in BLOCKS}
    steps_fn = lambda r: steps_to(runlog.metrics(r.path), target)  # noqa: E731
    time_fn = lambda r: time_to(runlog.metrics(r.path), target)  # noqa: E731
    too_slow = {cell_name(n, b): compared(runs, steps_fn, at(n, b, fast[n, b]), at(n, "all", fast[n, "all"]))
                for n in norms for b in RULES}
    too_slow_wall = {cell_name(n, b): compared(runs, time_fn, at(n, b, fast[n, b]), at(n, "all", fast[n, "all"]))
                     for n in norms for b in RULES}
    less_shift = {f"{cell_name(n, b)}, layer {i + 1}": compared(runs, lambda r, i=i: mean_ics(r, i),
                                                              at(n, b, lr_ics), at(n, "all", lr_ics),
                                                              lambda a, c: a / c if c else math.nan)
                  for n in norms for b in RULES for i in layers}
    one_layer = {plots.LABELS[n]: round_robin_deviation(runs, n, layers, lr_ics) for n in norms}

    fig_path = draw(ctx, runs, norms, fast, lr_ics, target)
    write_rate_table(ctx, runs, norms, fast, target)
    rates = ", ".join(f"{plots.LABELS[n]} {NAMES[b]} {fast[n, b]:g}" for n in norms for b in BLOCKS)
    too_slow_why, shift_why = untestable_cells(runs, norms, fast, lr_ics, ctx.cfg.model.depth, too_slow, less_shift)
    wall_why = {c: WALL_CLOCK for c in too_slow_wall}
    return [
        Finding("OL_too_slow", too_slow, f"steps to {target:.0%} test accuracy, block-coordinate / full SGD, per "
                f"seed, each at its fastest rate ({rates}). The layer the largest-gradient rule moved (share of "
                "ICS probes; the head is the last layer): " + "; ".join(
                    f"{plots.LABELS[n]} {chosen_shares(runs, n, 'largest_grad', fast[n, 'largest_grad'])}"
                    for n in norms), fig_path, untestable=too_slow_why),
        Finding("OL_too_slow_wall", too_slow_wall, f"training seconds to {target:.0%}, block-coordinate / full SGD, "
                "per seed, each at its fastest rate, every run alone on one thread; this implementation computes "
                "every layer's gradient at every step, so a one-layer step costs as much as a full one (more with "
                "the largest-gradient rule, which also compares the layers' gradient norms); not testable as "
                "built (shown only)", fig_path, untestable=wall_why),
        Finding("OL_less_shift", less_shift, f"mean ICS ||G - G'|| over training, block-coordinate / full SGD, per "
                f"seed, lr {lr_ics:g}", fig_path, untestable=shift_why),
        Finding("OL_one_layer_moves", one_layer, "round-robin: max over hidden layers 2, 3 of |fraction of probes "
                "with ICS exactly 0 - expected (3/4, 1/2)|, per seed", fig_path),
    ]
