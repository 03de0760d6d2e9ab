"""What every analysis writes: tables whose CSV holds numbers only, figures in rows of at most four panels."""

import math

import pandas as pd
from omegaconf import OmegaConf

from bnlab import plots
from bnlab.claims import Context


def test_a_table_csv_holds_rounded_numbers_and_says_where_a_value_is_infinite(tmp_path):
    ctx = Context("demo", OmegaConf.create({}), pd.DataFrame(), tmp_path)
    table = pd.DataFrame({"arm": ["no BN", "BN"], "lr": [1e-6, 0.1],
                          "steps": [[2892.0454545454527, math.inf, math.inf], [100.0, 200.0, 300.0]],
                          "gap": [0.11229999999999996, math.inf]})
    ctx.write_table("t", table, "a caption", infinite="never reached")
    csv = (tmp_path / "tables" / "demo_t.csv").read_text()
    assert "inf" not in csv and "9999" not in csv and "0.1123," in csv
    back = pd.read_csv(tmp_path / "tables" / "demo_t.csv")
    assert list(back.columns) == ["arm", "lr", "steps median", "steps min", "steps max", "steps n",
                                  "steps n never reached", "gap", "gap never reached"]
    assert back["steps n never reached"].tolist() == [2, 0] and back["gap never reached"].tolist() == [False, True]
    assert math.isnan(back["steps median"][0]) and back["steps min"][0] == 2892.05 and back["lr"][0] == 1e-6
    assert "inf [2.89e+03, inf] (n=3)" in ctx.tables[0]  # the report's view keeps the infinity in words


def test_a_table_without_infinities_gets_no_extra_column(tmp_path):
    ctx = Context("demo", OmegaConf.create({}), pd.DataFrame(), tmp_path)
    ctx.write_table("t", pd.DataFrame({"seed": [1, 2], "acc": [[0.5, 0.6], [0.7, 0.8]]}), "a caption")
    assert pd.read_csv(tmp_path / "tables" / "demo_t.csv").columns.tolist() == [
        "seed", "acc median", "acc min", "acc max", "acc n"]


def test_panels_wrap_past_four_and_one_legend_replaces_the_panels_own(tmp_path):
    fig, axes = plots.panels(6)
    assert len(axes) == 6 and {a.get_subplotspec().get_gridspec().get_geometry() for a in axes} == {(2, 3)}
    for a in axes:
        a.plot([0, 1], [0, 1], label="BN")
        a.plot([0, 1], [1, 0], label="no BN")
        a.legend()
    plots.shared_legend(fig, order=["no BN"])
    assert all(a.get_legend() is None for a in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["no BN", "BN"]
    assert plots.legend_room(fig)[1] > 0  # tight_layout keeps the panels above the legend
    plots.save(fig, tmp_path / "f")
    assert (tmp_path / "f.png").stat().st_size > 0
