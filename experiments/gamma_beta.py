"""Ioffe §3: what the learned gamma and beta buy, with sigmoid and ReLU units."""

from bnlab import plots
from bnlab.analysis import best_lr, curves, done, final_score, select
from bnlab.claims import Context, Finding


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    acts = sorted(runs["model.activation"].unique())
    fig, ax = plots.subplots(len(acts), width=3.3)
    findings_values = []
    for i, act in enumerate(acts):
        cell = select(runs, model__activation=act)
        best = best_lr(cell, "norm.affine")
        for affine, style in ((True, "-"), (False, "--")):
            r = select(cell, norm__affine=affine, optim__lr=best.get(affine))
            plots.band(ax[0, i], list(curves(r).values()), "step", "test_acc", plots.COLORS["batch"],
                       f"BN {'with' if affine else 'without'} gamma, beta (lr {best.get(affine)})", linestyle=style)
            if act == "sigmoid" and not affine:
                with_ = {int(x.seed): final_score(x) for _, x in select(cell, norm__affine=True,
                                                                         optim__lr=best.get(True)).iterrows()}
                without = {int(x.seed): final_score(x) for _, x in r.iterrows()}
                findings_values = [100 * (with_[s] - without[s]) for s in sorted(set(with_) & set(without))]
        ax[0, i].set(title=f"{act}, MNIST 3 x 100", xlabel="step", ylabel="test accuracy", ylim=(0.8, 1))
        ax[0, i].legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("curves"))
    table = runs.groupby(["model.activation", "norm.affine", "optim.lr"]).final_test_acc.apply(
        list).reset_index()
    ctx.write_table("final_acc", table, "BN with and without the learned affine transform")
    return [Finding("I_gamma_beta_sigmoid", findings_values, "sigmoid: with minus without gamma, beta, points",
                    fig_path)]
