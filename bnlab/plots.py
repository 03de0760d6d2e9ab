"""One figure style for every experiment, and the few plotting helpers they share."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnlab.norms import NORMS  # noqa: E402
from bnlab.runlog import atomic_write_bytes  # noqa: E402

# Each normaliser's colour and label, as its registry entry gives them: the same in every figure.
COLORS = {name: spec.color for name, spec in NORMS.items()}
LABELS = {name: spec.label for name, spec in NORMS.items()}

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False})


MAX_COLUMNS = 4  # a wider row of panels is too small to read on a page: more panels wrap to another row


def subplots(ncols: int = 1, nrows: int = 1, width: float = 3.6, height: float = 2.8, **kw):
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)


def panels(n: int, width: float = 3.6, height: float = 2.8, **kw):
    """(figure, list of n axes): n panels in rows of at most MAX_COLUMNS, as even as they go (6: two rows of 3),
    the grid's spare cells hidden."""
    rows = -(-n // MAX_COLUMNS)
    fig, ax = subplots(-(-n // rows), rows, width, height, **kw)
    for a in ax.flat[n:]:
        a.set_visible(False)
    return fig, list(ax.flat[:n])


def shared_legend(fig, axes=None, ncol: int | None = None, order: tuple | list = (), extra: tuple | list = ()) -> None:
    """One legend for the figure, below its panels, with every distinct label of `axes` (default: all): in place
    of a legend per panel, which repeats itself, shrinks, moves from panel to panel and gets in the data's way.
    Labels in `order` come first, in that order (matplotlib fills the legend column by column); `extra`: artists
    that stand for no one line, say a line style's meaning, go last."""
    handles: dict = {}
    for a in fig.axes if axes is None else axes:
        for handle, label in zip(*a.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
        if a.get_legend():
            a.get_legend().remove()
    labels = sorted(handles, key=lambda label: order.index(label) if label in order else len(order))
    for artist in extra:
        handles.setdefault(artist.get_label(), artist)
        labels.append(artist.get_label())
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="lower center", bbox_to_anchor=(0.5, 0),
                   ncol=ncol or min(len(labels), 4))


def legend_room(fig) -> tuple[float, float, float, float]:
    """The rectangle tight_layout may fill: the whole figure less a strip at the bottom for a shared legend."""
    if not fig.legends:
        return (0, 0, 1, 1)
    renderer = fig.canvas.get_renderer()
    height = max(legend.get_window_extent(renderer).height for legend in fig.legends)
    return (0, height / fig.bbox.height, 1, 1)


def readable_log_axes(fig) -> None:
    """A log axis spanning under 1.5 decades gets short labels at 1, 2 and 5 x 10^k: matplotlib's default labels
    every minor tick in scientific notation, and they collide."""
    for ax in fig.axes:
        for axis, scale, lim in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                 (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            fixed = isinstance(axis.get_major_locator(), matplotlib.ticker.FixedLocator)  # ticks an analysis chose
            if scale == "log" and not fixed and min(lim) > 0 and np.log10(max(lim) / min(lim)) < 1.5:
                axis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
                axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
                axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))


def save(fig, path: Path) -> str:
    """Write PNG (at print resolution) and PDF (vector) atomically; returns the PNG path for linking."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    readable_log_axes(fig)
    fig.tight_layout(rect=legend_room(fig))
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=200 if ext == "png" else None,
                    metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
        atomic_write_bytes(path.with_suffix(f".{ext}"), buf.getvalue())
    plt.close(fig)
    return str(path.with_suffix(".png"))


def band(ax, curves: list[pd.DataFrame], x: str, y: str, color: str, label: str, spread: str = "range",
         alpha: float = 0.2, **kw) -> None:
    """Median over seeds as a line, over a shaded band (curves aligned on x): min-max over seeds, or with
    spread="iqr" the interquartile range, for a quantity so noisy that min-max would bury the line."""
    if not curves:
        return
    table = pd.concat([c.set_index(x)[y].rename(i) for i, c in enumerate(curves)], axis=1).sort_index()
    xs = table.index.to_numpy()
    low, high = (table.quantile(0.25, axis=1), table.quantile(0.75, axis=1)) if spread == "iqr" else \
        (table.min(axis=1), table.max(axis=1))
    ax.plot(xs, table.median(axis=1), color=color, label=label, zorder=3, **kw)
    ax.fill_between(xs, low, high, color=color, alpha=alpha, linewidth=0, zorder=1)  # under every arm's line


def errorbar(ax, grouped, color: str, label: str) -> None:
    """Median over seeds with a min-max error bar at each x of a pandas SeriesGroupBy (x = the group key)."""
    med = grouped.median()
    ax.errorbar(med.index, med, yerr=[med - grouped.min(), grouped.max() - med], marker="o", ms=3, capsize=2,
                color=color, label=label)


def median_range(values) -> str:
    """'median [min, max] (n)' over seeds, the way every number in the report is quoted."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    finite = v[np.isfinite(v)]
    if len(finite) and np.all(finite == np.round(finite)) and np.abs(finite).max() < 1e9:
        fmt = lambda a: f"{a:.0f}"  # noqa: E731  step counts
    elif np.abs(finite).max(initial=0) >= 1e4:
        fmt = lambda a: f"{a:.3e}"  # noqa: E731
    else:
        fmt = lambda a: f"{a:.3g}"  # noqa: E731
    return f"{fmt(np.median(v))} [{fmt(v.min())}, {fmt(v.max())}] (n={len(v)})"


def values(xs) -> str:
    """Numbers for prose: '250, 500, inf', never a Python list's repr."""
    return ", ".join("inf" if np.isinf(x) else f"{x:.3g}" for x in xs)


def accuracy_vs_batch(runs: pd.DataFrame, arms, score, title: str):
    """Final score (median, min-max over seeds) against batch size, one line per normaliser."""
    sizes = sorted(int(b) for b in runs["trainer.batch_size"].unique())
    fig, ax = subplots(1, width=4.5)
    for arm in arms:
        r = runs[runs["norm.name"] == arm]
        errorbar(ax[0, 0], r.assign(score=score(r)).groupby("trainer.batch_size").score, COLORS[arm], LABELS[arm])
    ax[0, 0].set(xscale="log", xlabel="batch size (lr scaled linearly)", ylabel="final test accuracy", title=title)
    ax[0, 0].set_xticks(sizes, [str(s) for s in sizes])
    ax[0, 0].minorticks_off()
    ax[0, 0].legend(fontsize=7)
    return fig
