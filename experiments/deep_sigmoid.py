"""Ioffe §4.2.2 (BN-x5-Sigmoid analogue): a 10-layer sigmoid MLP trains only with BN."""

from bnlab import collect, plots
from bnlab.analysis import best_lr, curves, done, fraction_beyond, select
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    best = best_lr(runs, "norm.name")
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs) + 1, width=3.0)
    for i, lr in enumerate(lrs):
        for arm in ARMS:
            plots.band(ax[0, i], list(curves(select(runs, norm__name=arm, optim__lr=lr)).values()), "step",
                       "test_acc", plots.COLORS[arm], plots.LABELS[arm])
        ax[0, i].set(title=f"10 sigmoid layers, lr {lr:g}", xlabel="step", ylabel="test accuracy", ylim=(0, 1))
        ax[0, i].legend()
    # saturation: fraction of sigmoid inputs beyond |4| (sigmoid' < 0.018) per layer, first and last probe
    ax_sat = ax[0, -1]
    for arm in ARMS:
        r = select(runs, norm__name=arm, optim__lr=best.get(arm))
        if not len(r):
            continue
        acts = collect.activations(r.sort_values("seed").path.iloc[0])
        for step, style in ((acts.step.min(), ":"), (acts.step.max(), "-")):
            a = acts[acts.step == step].sort_values("layer")
            ax_sat.plot(a.layer, fraction_beyond(a, 4.0, ctx.cfg.trainer.hist_range), style, marker="o", ms=3,
                        color=plots.COLORS[arm], label=f"{plots.LABELS[arm]} step {step}")
    ax_sat.set(title="saturated sigmoid inputs (|x| > 4)", xlabel="hidden layer", ylabel="fraction", ylim=(0, 1))
    ax_sat.legend(fontsize=6)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    table = runs.groupby(["norm.name", "optim.lr"]).final_test_acc.apply(plots.median_range).reset_index()
    ctx.write_table("final_acc", table, "10-layer sigmoid MLP: final test accuracy by learning rate")
    per_seed = {arm: select(runs, norm__name=arm, optim__lr=best.get(arm)).final_test_acc.tolist() for arm in ARMS}
    return [
        Finding("I5_plain_fails", per_seed["none"], f"no BN at its best lr {best.get('none')}", fig_path),
        Finding("I5_bn_trains", per_seed["batch"], f"BN at its best lr {best.get('batch')}", fig_path),
    ]
