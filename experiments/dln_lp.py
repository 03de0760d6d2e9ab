"""Santurkar et al. 2018 Fig. 13: lp normalisations in the 25-layer deep linear network."""

import math

from bnlab import plots
from bnlab.analysis import curves, done, final_train_loss, per_seed_ratio, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch", "lp1", "lp2", "lpinf")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    fig, ax = plots.subplots(1, width=4.0)
    for arm in ARMS:
        cs = [c.dropna(subset=["train_loss"]) for c in curves(select(runs, norm__name=arm)).values()]
        plots.band(ax[0, 0], cs, "step", "train_loss", plots.COLORS[arm], plots.LABELS[arm], alpha=0.12)  # five
    ax[0, 0].set(yscale="log", xlabel="step", ylabel="training loss (sum)",
                 title=f"25-layer linear net, lr {ctx.cfg.optim.lr:g}")
    plots.shared_legend(fig, ncol=3)  # below the panel: inside it, the lines ran through the legend
    fig_path = plots.save(fig, ctx.figure_path("loss"))
    table = runs.groupby("norm.name").final_train_loss.apply(list).reset_index()
    ctx.write_table("final_loss", table, "Deep linear network with lp normalisation: final training loss")
    diverged = sorted(int(s) for s in select(runs, norm__name="none", status="diverged").seed)
    lp = {p: [math.nan if s in diverged else v for s, v in zip(sorted(set(select(runs, norm__name=p).seed)
                                                                        & set(select(runs, norm__name="none").seed)),
                                                                 per_seed_ratio(runs, p, "none", final_train_loss),
                                                                 strict=True)]
          for p in ("lp1", "lp2", "lpinf")}
    why = (f"the standard network diverged in seeds {diverged} (loss above 100x its initial value): lp/none is then 0 "
           "by construction, the baseline's instability at lr 1e-6, not lp's loss against a trained baseline")
    return [
        Finding("S8_dln_lp", lp, "final training loss, lp / standard, per seed (NaN: the standard network diverged)",
                fig_path, untestable={p: why for p in lp} if diverged else {}),
        Finding("S8_dln_l1", per_seed_ratio(runs, "lp1", "batch", final_train_loss),
                "final training loss, l1 / BN, per seed", fig_path),
    ]
