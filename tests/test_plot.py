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


def test_the_figure_1_notebook_runs(sweep, monkeypatch):
    monkeypatch.setenv("BNLAB_FIG1_RUNS", str(sweep))
    notebook = json.loads((REPO_ROOT / "examples" / "figure1.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), namespace)  # noqa: S102  (our own notebook)
    assert len(namespace["runs"]) == 4 and namespace["fig"].axes[0].get_title().startswith("(a)")
