"""Deep Learning Book §8.7.1: the one-unit-per-layer linear chain, with and without BN on its hidden units."""

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from bnlab import collect, plots
from bnlab.claims import Context, Finding
from bnlab.data import load_dataset
from bnlab.models import build_model
from bnlab.probes import first_order_check

ARMS = ("none", "batch")


def init_checks(ctx: Context, depths: list[int], init_means: list[float]) -> pd.DataFrame:
    """The one-step first-order check at initialisation, for each depth, arm and init mean (seed 0)."""
    d = ctx.cfg.data
    x = load_dataset(d.name, d.root, n_samples=d.n_samples, dim=d.dim).train.x
    rows = []
    for depth in depths:
        for arm in ARMS:
            for mean in init_means:
                model_cfg = OmegaConf.merge(ctx.cfg.model, {"depth": depth, "init_mean": mean})
                norm_cfg = OmegaConf.merge(ctx.cfg.norm, {"name": arm})
                torch.manual_seed(0)
                check = first_order_check(build_model(model_cfg, norm_cfg, (d.dim,), d.dim), x)
                grads = check["weight_grad_norms"]
                # the share of the whole gradient that reaches the lower layers' weights w_1 .. w_{l-1}
                rows.append({"layers": depth + 1, "arm": arm, "init_mean": mean, "ratio": check["ratio"],
                             "lower_grad_share": max(grads[:-1]) / check["grad_norm"]})
    return pd.DataFrame(rows)


def stable(run) -> bool:
    """Finished, and the training loss did not end above where it started."""
    if run.status != "finished":
        return False
    m = collect.metrics(run.path).dropna(subset=["train_loss"])
    return bool(m.train_loss.iloc[-1] <= m.train_loss.iloc[0])


def analyze(ctx: Context) -> list[Finding]:
    runs = ctx.runs
    depths = sorted(int(d) for d in runs["model.depth"].unique())
    exploding = ctx.cfg.claims.DLB_bn_first_order.params.exploding_init_mean
    checks = init_checks(ctx, depths, [ctx.cfg.model.init_mean, exploding])
    runs = runs.assign(stable=[stable(r) for _, r in runs.iterrows()])
    lr_max = {arm: {d + 1: runs[(runs["norm.name"] == arm) & (runs["model.depth"] == d) & runs.stable]["optim.lr"]
                    .max() for d in depths} for arm in ARMS}

    fig, ax = plots.subplots(3, width=3.2)
    for arm in ARMS:
        for mean, style in ((ctx.cfg.model.init_mean, "-"), (exploding, "--")):
            c = checks[(checks.arm == arm) & (checks.init_mean == mean)]
            ax[0, 0].plot(c.layers, (c.ratio - 1).abs(), style, marker="o", ms=3, color=plots.COLORS[arm],
                          label=f"{plots.LABELS[arm]}, w ~ N({mean:g}, 0.1²)")
        ax[0, 1].plot(list(lr_max[arm]), list(lr_max[arm].values()), marker="o", color=plots.COLORS[arm],
                      label=plots.LABELS[arm])
    c = checks[checks.arm == "batch"]
    ax[0, 2].plot(c.layers, c.lower_grad_share, "o", color=plots.COLORS["batch"])
    ax[0, 0].set(xscale="log", yscale="log", xlabel="layers l", ylabel="|actual / first-order - 1|",
                 title="one step at initialisation")
    ax[0, 1].set(xscale="log", yscale="log", xlabel="layers l", ylabel="largest stable lr", title="200 steps")
    ax[0, 2].set(xscale="log", yscale="log", xlabel="layers l", ylabel="lower-layer gradient / whole gradient",
                 title="BN: gradient of the lower layers")
    for a in ax[0]:
        a.set_xticks([d + 1 for d in depths], [str(d + 1) for d in depths])
        a.minorticks_off()
    for a in ax[0, :2]:
        a.legend(fontsize=7)
    fig_path = plots.save(fig, ctx.figure_path("chain"))
    ctx.write_table("init_check", checks, "First-order check at initialisation (seed 0)")
    ctx.write_table("lr_max", pd.DataFrame(lr_max).rename_axis("layers").reset_index(),
                    "Largest stable learning rate (finished, training loss not above its start) by depth")
    bn, plain = checks[checks.arm == "batch"], checks[checks.arm == "none"]
    deep_plain = plain[(plain.layers >= 16) & np.isclose(plain.init_mean, exploding)]
    lr_bn = [v for v in lr_max["batch"].values() if v == v]
    lo, hi = min(lr_max["none"]), max(lr_max["none"])
    return [
        Finding("DLB_bn_first_order", list((bn.ratio - 1).abs()), "|ratio - 1| with BN, per depth and init",
                fig_path),
        Finding("DLB_plain_higher_order", list((deep_plain.ratio - 1).abs()),
                "|ratio - 1| without BN, N(1.1) init, l >= 16", fig_path),
        Finding("DLB_bn_lower_layers_idle", list(bn.lower_grad_share), "per depth and init", fig_path),
        Finding("DLB_lr_depth_plain", [lr_max["none"][lo] / lr_max["none"][hi]] if lr_max["none"][hi] else [],
                f"lr_max without BN by layers: {lr_max['none']}", fig_path),
        Finding("DLB_lr_depth_bn", [max(lr_bn) / min(lr_bn)] if lr_bn else [],
                f"lr_max with BN by layers: {lr_max['batch']}", fig_path),
    ]
