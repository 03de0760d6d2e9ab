"""Ioffe Alg. 2: running (population) statistics against test-batch statistics at inference."""

from pathlib import Path

import pandas as pd
import torch

from bnlab import plots, runlog
from bnlab.analysis import done
from bnlab.claims import Context, Finding
from bnlab.data import load
from bnlab.models import build_model
from bnlab.probes import frozen

TEST_BATCHES = (2, 8, 32, 128, 1000)


@torch.no_grad()
def batch_statistics_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Accuracy when each test batch is normalised with its own statistics (training mode, buffers restored)."""
    n = len(x) // batch * batch
    if n == 0:  # a test set smaller than one batch (the tiny test fixtures)
        return float("nan")
    with frozen(model):
        model.train()
        correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, n, batch))
    return correct / n


def analyze(ctx: Context) -> list[Finding]:
    runs = done(ctx.runs)
    d = ctx.cfg.data
    data = load(d)
    x, y = data.test.x, data.test.y
    by_class = torch.argsort(y, stable=True)  # class-sorted batches: the non-i.i.d. case
    rows = []
    for _, r in runs.iterrows():
        cfg = runlog.run_config(r.path)
        model = build_model(cfg.model, cfg.norm, data.shape, data.num_classes)
        model.load_state_dict(torch.load(Path(r.path) / runlog.MODEL))
        row = {"momentum": r["norm.momentum"], "seed": int(r.seed), "running": r.final_test_acc}
        for b in TEST_BATCHES:
            row[f"iid {b}"] = batch_statistics_accuracy(model, x, y, b)
        row["class-sorted 128"] = batch_statistics_accuracy(model, x[by_class], y[by_class], 128)
        rows.append(row)
    t = pd.DataFrame(rows)
    fig, ax = plots.subplots(1, width=4.2)
    for k, (m, g) in enumerate(t.groupby("momentum")):
        med = [g[f"iid {b}"].median() for b in TEST_BATCHES]
        color = plots.plt.cm.viridis(k / max(1, t.momentum.nunique() - 1))
        ax[0, 0].plot(TEST_BATCHES, med, marker="o", ms=3, color=color, label=f"test-batch statistics, momentum {m:g}")
        ax[0, 0].axhline(g.running.median(), color=color, ls="--", lw=0.8, label=f"running statistics, momentum {m:g}")
        ax[0, 0].scatter([128], [g["class-sorted 128"].median()], marker="x", color=color)
    ax[0, 0].set(xscale="log", xlabel="test batch size", ylabel="test accuracy",
                 title="BN at inference (x: class-sorted batches of 128)")
    ax[0, 0].legend(fontsize=6)
    fig_path = plots.save(fig, ctx.figure_path("inference_statistics"))
    cols = ["running", *[f"iid {b}" for b in TEST_BATCHES], "class-sorted 128"]
    ctx.write_table("accuracy", t.groupby("momentum")[cols].agg(list).reset_index(),
                    "Test accuracy with running statistics vs each test batch's own statistics")
    by_momentum = lambda col: {f"momentum {m:g}": list(100 * (g.running - g[col]))  # noqa: E731
                               for m, g in t.groupby("momentum")}
    return [
        Finding("A2_running_beats_small_batch", by_momentum("iid 8"),
                "running minus test-batch statistics (batch 8), points, per seed", fig_path),
        Finding("A2_non_iid", by_momentum("class-sorted 128"),
                "running minus class-sorted batch statistics (batch 128), points, per seed", fig_path),
    ]
