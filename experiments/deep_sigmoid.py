"""Ioffe §4.2.2 (BN-x5-Sigmoid analogue): a 10-layer sigmoid MLP trains only with BN."""

from bnlab import plots, runlog
from bnlab.analysis import curves, done, fraction_beyond, frozen_choice, score, select, selection
from bnlab.claims import Context, Finding

ARMS = ("none", "batch")


def best_setting(runs, arm: str) -> tuple[str, float]:
    """The arm's own best (init, learning rate): highest median score over seeds, a diverged run at chance;
    chosen on the exploratory seeds (`frozen_choice`)."""

    def choose() -> list:
        med = runs[runs["norm.name"] == arm].assign(score=lambda d: score(d)).groupby(["model.init", "optim.lr"])
        med = med.score.median().reset_index().sort_values("optim.lr", kind="stable")  # ties: the smaller rate
        row = med.loc[med.score.idxmax()]
        return [str(row["model.init"]), float(row["optim.lr"])]

    init, lr = frozen_choice(selection(runs, [f"best init and rate of {arm}"]), choose)
    return init, lr


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    setting = {arm: best_setting(runs, arm) for arm in ARMS}
    best = {arm: lr for arm, (_, lr) in setting.items()}
    runs_at_best_init = {arm: select(runs, norm__name=arm, model__init=setting[arm][0]) for arm in ARMS}
    lrs = sorted(runs["optim.lr"].unique())
    fig, ax = plots.subplots(len(lrs) + 1, width=3.0)
    for i, lr in enumerate(lrs):
        for arm in ARMS:
            plots.band(ax[0, i], list(curves(select(runs_at_best_init[arm], optim__lr=lr)).values()), "step",
                       "test_acc", plots.COLORS[arm], f"{plots.LABELS[arm]} ({setting[arm][0]} init)")
        ax[0, i].set(title=f"10 sigmoid layers, lr {lr:g}", xlabel="step", ylabel="test accuracy", ylim=(0, 1))
        ax[0, i].legend()
    # saturation: fraction of sigmoid inputs beyond |4| (sigmoid' < 0.018) per layer, first and last probe
    ax_sat = ax[0, -1]
    for arm in ARMS:
        r = select(runs_at_best_init[arm], optim__lr=best[arm])
        if not len(r):
            continue
        acts = runlog.activations(r.sort_values("seed").path.iloc[0])
        for step, style in ((acts.step.min(), ":"), (acts.step.max(), "-")):
            a = acts[acts.step == step].sort_values("layer")
            ax_sat.plot(a.layer, fraction_beyond(a, 4.0, ctx.cfg.trainer.hist_range), style, marker="o", ms=3,
                        color=plots.COLORS[arm], label=f"{plots.LABELS[arm]} step {step}")
    ax_sat.set(title="saturated sigmoid inputs (|x| > 4)", xlabel="hidden layer", ylabel="fraction", ylim=(0, 1))
    ax_sat.legend(fontsize=6)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    table = runs.assign(score=score(runs)).groupby(["norm.name", "model.init", "optim.lr"]).score
    ctx.write_table("final_acc", table.apply(list).reset_index(),
                    "10-layer sigmoid MLP: final test accuracy by init and learning rate (a diverged run at chance)")
    per_seed = {arm: score(select(runs_at_best_init[arm], optim__lr=best[arm])).tolist() for arm in ARMS}
    return [
        Finding("I5_plain_fails", per_seed["none"], f"no BN at its best setting: {setting['none'][0]} init, lr "
                f"{best['none']:g}", fig_path),
        Finding("I5_bn_trains", per_seed["batch"], f"BN at its best setting: {setting['batch'][0]} init, lr "
                f"{best['batch']:g}", fig_path),
    ]
