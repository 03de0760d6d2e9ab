"""Santurkar et al. 2018 Fig. 3 and 10 on the 25-layer deep linear network: ICS, loss, landscape."""

import math

from bnlab import plots
from bnlab.analysis import curves, done, paired_ratio, probe_median, select
from bnlab.claims import Context, Finding
from experiments.ics_landscape import draw

ARMS = ("none", "batch")


def final_train_loss(run) -> float:
    return float(run.final_train_loss) if run.status == "finished" else math.inf


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs), width=3.2)
    for i, lr in enumerate(lrs):
        for arm in ARMS:
            cs = [c.dropna(subset=["train_loss"]) for c in curves(select(runs, norm__name=arm, optim__lr=lr)).values()]
            plots.band(ax[0, i], cs, "step", "train_loss", plots.COLORS[arm], plots.LABELS[arm])
        ax[0, i].set(yscale="log", title=f"25-layer linear net, lr {lr:g}", xlabel="step", ylabel="training loss (sum)")
        ax[0, i].legend()
    loss_fig = plots.save(fig, ctx.figure_path("loss"))
    probe_figs = {lr: draw(ctx, select(runs, optim__lr=lr), f"deep linear network, lr {lr:g}: ICS and landscape",
                           f"probes_lr{lr:g}") for lr in lrs}
    table = runs.groupby(["norm.name", "optim.lr"]).final_train_loss.apply(plots.median_range).reset_index()
    ctx.write_table("final_loss", table, "Deep linear network: final training loss (sum of squares)")
    low, high = select(runs, optim__lr=1e-7), select(runs, optim__lr=1e-6)
    pair = ("seed",)
    second_half = lambda run: probe_median(run, "ics", "l2", 0.5, 1.0, by_layer=True)  # noqa: E731
    return [
        Finding("S3_ics_dln", paired_ratio(low, "batch", "none", second_half, pair),
                "median ICS l2 over the second half, BN / standard, per layer and seed, lr 1e-7",
                probe_figs.get(1e-7, loss_fig)),
        Finding("S3_dln_bn_trains_better", paired_ratio(runs, "none", "batch", final_train_loss),
                "final training loss, standard / BN, per learning rate and seed", loss_fig),
        Finding("S5_dln_predictiveness",
                paired_ratio(high, "batch", "none", lambda run: probe_median(run, "landscape", "grad_change",
                                                                             direction="gradient"), pair),
                "median max gradient change along the gradient, BN / standard, lr 1e-6",
                probe_figs.get(1e-6, loss_fig)),
    ]
