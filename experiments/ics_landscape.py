"""Santurkar et al. 2018 Fig. 3 (ICS, Def. 2.1) and Fig. 4 (landscape along the gradient), MLP on MNIST."""

import math

import numpy as np

from bnlab import figures, runlog
from bnlab.analysis import done, layer_cells, per_seed_ratio, probe_median, seed_pairs
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")
EARLY = 0.2  # the claims concern the first 20% of training, where the paper's differences are largest


def matched_loss_ratio(bn_run, plain_run, column: str) -> float:
    """Median over BN's landscape probes of column(BN) / column(none) at the standard network's probe with the
    nearest training-batch loss (log scale), within the loss range both runs cover: a comparison at equal
    progress, where a comparison at equal step flatters the network that is further along."""
    bn, plain = (runlog.probes(r.path) for r in (bn_run, plain_run))
    bn, plain = (p[(p.kind == "landscape") & (p.direction == "gradient")] for p in (bn, plain))
    lo, hi = max(bn.loss.min(), plain.loss.min()), min(bn.loss.max(), plain.loss.max())
    bn = bn[(bn.loss >= lo) & (bn.loss <= hi)]
    if not len(bn) or not len(plain):
        return math.nan
    log_plain = np.log(plain.loss.to_numpy())
    nearest = [int(np.abs(log_plain - math.log(v)).argmin()) for v in bn.loss]
    return float(np.median(bn[column].to_numpy() / plain[column].to_numpy()[nearest]))


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    fig_path = figures.ics_and_landscape(
        ctx, runs, "MLP on MNIST, lr 0.1: ICS (Def. 2.1) and the landscape along the gradient", "ics_landscape")

    def early(column: str, direction: str = "gradient"):
        return lambda run: probe_median(run, "landscape", column, 0, EARLY, direction=direction)

    ics = lambda column: lambda run: probe_median(run, "ics", column, by_layer=True)  # noqa: E731
    matched = lambda column: [matched_loss_ratio(a, b, column)  # noqa: E731
                              for a, b in seed_pairs(runs, "batch", "none")]
    return [
        Finding("S3_ics_mlp", layer_cells(runs, "batch", "none", ics("l2")),
                "median ICS l2 over training, BN / standard, per seed (shown, not counted: it scales with the "
                "gradient's norm; S3_ics_mlp_cosine decides S3)", fig_path),
        Finding("S3_ics_mlp_cosine", layer_cells(runs, "batch", "none", ics("cos"), lambda a, b: (1 - a) / (1 - b)),
                "1 - (median cos(G, G') over training), BN / standard, per seed", fig_path),
        Finding("S4_loss_range", per_seed_ratio(runs, "batch", "none", early("range")),
                "median loss range along the gradient (first 20%), BN / standard, per seed", fig_path),
        Finding("S4_loss_range_matched", matched("range"),
                "median loss range along the gradient at matched training loss, BN / standard, per seed", fig_path),
        Finding("S5_predictiveness", per_seed_ratio(runs, "batch", "none", early("grad_change")),
                "median max gradient change (first 20%), BN / standard, per seed", fig_path),
        Finding("S5_predictiveness_matched", matched("grad_change"),
                "median max gradient change at matched training loss, BN / standard, per seed", fig_path),
        Finding("S6_beta", per_seed_ratio(runs, "batch", "none", early("beta")),
                "median effective beta (first 20%), BN / standard, per seed", fig_path),
        Finding("S7_random_direction", per_seed_ratio(runs, "batch", "none", early("range", "random")),
                "median loss range along a random direction (first 20%), BN / standard, per seed", fig_path),
    ]
