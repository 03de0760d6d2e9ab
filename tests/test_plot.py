"""`python -m bnlab.plot` and the Figure 1 notebook on runs trained here."""

import json

import pytest

from bnlab import runlog
from bnlab.config import REPO_ROOT
from bnlab.plot import main
from bnlab.train import train
from tests.conftest import make_cfg


@pytest.fixture(scope="module")
def sweep(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("plot") / "fig1"
    for norm in ("none", "batch"):
        for lr in (0.1, 0.5):
            cfg = make_cfg(data_root, root, [f"norm={norm}", f"optim.lr={lr}", "model.activation=sigmoid"])
            train(cfg, str(root / f"norm={norm},optim.lr={lr}"))
    return root


@pytest.mark.parametrize("kind, extra", [("curves", ["--metric", "train_acc"]), ("lr", []),
                                         ("percentiles", ["--layer", "2"])])
def test_plot_draws_any_runs_grouped_by_any_key(sweep, tmp_path, capsys, kind, extra):
    main([kind, str(sweep), "--by", "norm.name", "--out", str(tmp_path / kind), *extra])
    assert "4 runs" in capsys.readouterr().out
    assert (tmp_path / f"{kind}.png").stat().st_size > 10_000 and (tmp_path / f"{kind}.pdf").exists()


def test_plot_lands_beside_the_runs_not_in_the_current_directory(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["lr", str(sweep)])
    main(["curves", str(sweep / "norm=none,optim.lr=0.1"), str(sweep / "norm=batch,optim.lr=0.1")])
    main(["percentiles", str(sweep / "norm=none,optim.lr=0.1"), "--layer", "2"])  # a lone run: its sweep folder
    assert all((sweep / f"plot_{kind}.{ext}").is_file() for kind in ("lr", "curves", "percentiles")
               for ext in ("png", "pdf"))
    assert not list(tmp_path.iterdir())


def test_runlog_loads_run_folders_and_sweep_folders_alike(sweep):
    one = runlog.load([sweep / "norm=none,optim.lr=0.1"])
    assert len(one) == 1 and one["norm.name"].item() == "none"
    both = runlog.load([sweep, sweep / "norm=none,optim.lr=0.1"])
    assert len(both) == 4 and set(both["optim.lr"]) == {0.1, 0.5}


def test_plot_names_a_key_it_does_not_know(sweep, tmp_path):
    with pytest.raises(SystemExit, match="no config key optim.lrr"):
        main(["lr", str(sweep), "--by", "optim.lrr", "--out", str(tmp_path / "x")])


def run_notebook() -> dict:
    """The code cells of examples/figure1.ipynb, run in one namespace as Jupyter runs them, less IPython's magics
    (%matplotlib: Jupyter's alone); the outputs saved with it are not read."""
    notebook = json.loads((REPO_ROOT / "examples" / "figure1.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            code = "".join(line for line in cell["source"] if not line.lstrip().startswith("%"))
            exec(code, namespace)  # noqa: S102  (our own notebook)
    return namespace


def test_the_figure_1_notebook_runs(sweep, monkeypatch):
    monkeypatch.setenv("BNLAB_FIG1_RUNS", str(sweep))
    namespace = run_notebook()
    a, b, c = namespace["fig"].axes
    assert len(namespace["runs"]) == 4 and a.get_title().startswith("(a)")
    shared = b.get_shared_y_axes()  # (b) and (c) on one y-axis, (a) on its own
    assert shared.joined(b, c) and not shared.joined(a, b) and b.get_ylim() == c.get_ylim()


def test_the_figure_1_notebook_unpacks_only_fig1_and_outside_results_on_a_fresh_clone(monkeypatch, tmp_path):
    monkeypatch.delenv("BNLAB_FIG1_RUNS", raising=False)
    monkeypatch.setattr("bnlab.config.REPO_ROOT", tmp_path / "clone")  # no runs on disk; the committed archive stays
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    namespace = run_notebook()
    runs = namespace["RUNS"]
    assert runs.parent.parent == tmp_path / "tmp" and [p.name for p in runs.parent.iterdir()] == ["fig1"]
    assert len(namespace["runs"]) == len(list(runs.glob("*/config.yaml"))) > 0
    namespace["unpacked"].cleanup()
    assert not list((tmp_path / "tmp").iterdir())
