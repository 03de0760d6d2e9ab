"""The claim functions of the analyses, on hand-made runs with known answers, edge branches included."""

import json
import math

import pandas as pd
import pytest

from bnlab.analysis import drop_beyond_control, layer_cells, paired_steps_ratio, per_seed_ratio
from bnlab.claims import Criterion, Finding, judge
from bnlab.experiments.bjorck import distances, first_blowup
from bnlab.experiments.deep_sigmoid import best_setting
from bnlab.experiments.dlbook_chain import converged
from bnlab.experiments.ics_landscape import matched_loss_ratio
from bnlab.lr_sweep import lr_max_per_seed, lr_max_ratios


def runs_table(rows: list[tuple]) -> pd.DataFrame:
    """(norm, lr, seed, final test accuracy or 'diverged') -> the columns the analyses read."""
    return pd.DataFrame([{"norm.name": n, "optim.lr": lr, "seed": s,
                          "status": "diverged" if acc == "diverged" else "finished",
                          "final_test_acc": None if acc == "diverged" else acc} for n, lr, s, acc in rows])


def run_dir(tmp_path, name: str, metrics=(), probes=()) -> pd.Series:
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (d / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    return pd.Series({"path": str(d), "status": "finished"})


def test_lr_range_judges_each_arm_against_its_own_best():
    """A baseline a little worse everywhere still trains: its lr_max is where it reaches 90% of its own best,
    never 0 (which made the ratio infinite when judged against BN's best)."""
    cell = runs_table([(n, lr, s, acc) for s in (0, 1) for n, lr, acc in [
        ("none", 0.1, 0.85), ("none", 1.0, 0.80), ("none", 10.0, "diverged"),
        ("batch", 0.1, 0.97), ("batch", 1.0, 0.96), ("batch", 10.0, 0.95)]])
    assert lr_max_per_seed(cell, "none", 0.9, 0.2) == {0: 1.0, 1: 1.0}
    assert lr_max_ratios(cell, 0.9, 0.2) == [10.0, 10.0]
    # an arm whose best median is below 20% trains nowhere: then, and only then, the ratio is infinite
    stuck = cell.assign(final_test_acc=cell.final_test_acc.where(cell["norm.name"] == "batch", 0.11),
                        status="finished")
    assert lr_max_ratios(stuck, 0.9, 0.2) == [math.inf, math.inf]
    both = stuck.assign(final_test_acc=0.11)
    assert all(math.isnan(v) for v in lr_max_ratios(both, 0.9, 0.2))


def test_lr_range_is_per_seed():
    cell = runs_table([("none", 0.1, 0, 0.9), ("none", 1.0, 0, 0.9), ("none", 0.1, 1, 0.9), ("none", 1.0, 1, 0.3),
                       ("batch", 0.1, 0, 0.9), ("batch", 1.0, 0, 0.9), ("batch", 0.1, 1, 0.9), ("batch", 1.0, 1, 0.9)])
    assert lr_max_ratios(cell, 0.9, 0.2) == [1.0, 10.0]  # seed 1's baseline fails at 1.0 (0.3 < 0.81)
    ratios = judge(Finding("I4", {"cell": lr_max_ratios(cell, 0.9, 0.2)}), Criterion(4.0, "ge", 0.1, "ratio", 1.0))
    assert ratios.verdict == "inconclusive"  # two seeds, 1x and 10x: the interval spans 4x


def test_steps_ratio_counts_a_run_that_never_reaches_the_target_as_infinitely_slow(tmp_path):
    curve = lambda accs: [{"step": 100 * i, "train_acc": a} for i, a in enumerate(accs)]  # noqa: E731
    rows = []
    for norm, seed, accs in [("noisy_batch", 0, [0.5, 0.96]), ("batch", 0, [0.5, 0.7, 0.96]),
                             ("noisy_batch", 1, [0.5, 0.6]), ("batch", 1, [0.96]),  # noisy seed 1 never gets there
                             ("none", 0, [0.5, 0.5]), ("none", 1, [0.5, 0.5])]:
        r = run_dir(tmp_path, f"{norm}{seed}", curve(accs))
        rows.append({**r, "norm.name": norm, "seed": seed})
    runs = pd.DataFrame(rows)
    # crossings interpolated between evaluations: noisy at 100 x 0.45/0.46, BN at 100 + 100 x 0.25/0.26 steps
    expected = (100 * 0.45 / 0.46) / (100 + 100 * 0.25 / 0.26)
    assert paired_steps_ratio(runs, "noisy_batch", "batch", 0.95, "train_acc") == [pytest.approx(expected), math.inf]
    ratios = paired_steps_ratio(runs, "noisy_batch", "none", 0.95, "train_acc")
    assert ratios[0] == 0.0 and math.isnan(ratios[1])  # never vs never: nothing measured


def test_layers_are_cells_and_a_seed_summarises_its_layers():
    runs = pd.DataFrame([{"norm.name": n, "seed": s, "v": v} for n, s, v in [
        ("batch", 0, {0: 2.0, 1: 8.0}), ("none", 0, {0: 1.0, 1: 2.0}),
        ("batch", 1, {0: 3.0, 1: 3.0}), ("none", 1, {0: 1.0, 1: 1.0})]])
    value = lambda r: r.v  # noqa: E731
    assert layer_cells(runs, "batch", "none", value) == {"layer 1": [2.0, 3.0], "layer 2": [4.0, 3.0]}
    assert per_seed_ratio(runs, "batch", "none", value) == [3.0, 3.0]  # median over layers, one value per seed


def test_batch_size_drop_is_measured_against_the_control():
    rows = []
    for seed in (0, 1, 2):
        rows += [("none", 64, seed, 0.95), ("none", 4, seed, 0.93), ("layer", 64, seed, 0.96),
                 ("layer", 4, seed, 0.96 - 0.01 * seed), ("batch", 64, seed, 0.96), ("batch", 4, seed, 0.80)]
    runs = pd.DataFrame([{"norm.name": n, "trainer.batch_size": b, "seed": s, "status": "finished",
                          "final_test_acc": a} for n, b, s, a in rows])
    assert drop_beyond_control(runs, "layer", 64, 4) == pytest.approx([-2.0, -1.0, 0.0])
    assert drop_beyond_control(runs, "batch", 64, 4) == pytest.approx([14.0, 14.0, 14.0])


def test_explosion_is_read_on_a_grid_of_step_lengths():
    """B3 steps a distance d = eta |g| along the gradient: 4 points a decade from 1e-3 to 1e6 (37 lengths)."""
    grid = distances(type("P", (), {"d_min": 1e-3, "d_max": 1e6, "per_decade": 4})())
    assert len(grid) == 37 and grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(1e6)
    ratios = [0.5] * 5 + [2.0, 50.0, 5000.0] + [math.nan] * 29
    assert first_blowup(grid, ratios) == pytest.approx(10 ** -1.75)  # the first overshoot
    assert first_blowup(grid, ratios, 1000.0) == pytest.approx(10 ** -1.25)  # the first explosion
    assert first_blowup(grid, [0.5] * 37, 1000.0) == math.inf


def test_a_converged_run_ends_below_a_fraction_of_its_initial_loss(tmp_path):
    stalled = run_dir(tmp_path, "stalled", [{"step": 0, "test_loss": 1.0, "train_loss": None},
                                            {"step": 20, "test_loss": 0.99, "train_loss": 0.98}])
    trained = run_dir(tmp_path, "trained", [{"step": 0, "test_loss": 1.0, "train_loss": None},
                                            {"step": 20, "test_loss": 0.05, "train_loss": 0.05}])
    assert not converged(stalled, 0.1) and converged(trained, 0.1)
    assert not converged(trained.copy().replace({"finished": "diverged"}), 0.1)


def test_matched_loss_pairs_probes_at_equal_training_loss(tmp_path):
    probe = lambda step, loss, rng: {"step": step, "kind": "landscape", "direction": "gradient",  # noqa: E731
                                     "loss": loss, "range": rng, "grad_change": rng}
    # BN falls fast, the standard network slowly: at equal step BN looks 10x smoother, at equal loss 2x
    bn = run_dir(tmp_path, "bn", probes=[probe(0, 2.3, 1.0), probe(25, 0.5, 0.2), probe(50, 0.1, 0.1)])
    plain = run_dir(tmp_path, "plain", probes=[probe(0, 2.3, 2.0), probe(25, 1.5, 2.0), probe(50, 0.5, 0.4)])
    assert matched_loss_ratio(bn, plain, "range") == pytest.approx(0.5)  # losses 2.3, 0.5 pair; 0.1 is outside


def test_each_arm_gets_its_own_best_init_and_rate():
    runs = pd.DataFrame([{"norm.name": "none", "model.init": i, "optim.lr": lr, "seed": s, "status": "finished",
                          "final_test_acc": a} for i, lr, a in [("default", 0.1, 0.11), ("xavier", 0.1, 0.30),
                                                                ("xavier", 2.0, 0.30), ("default", 2.0, 0.2)]
                         for s in (0, 1)])
    assert best_setting(runs, "none") == ("xavier", 0.1)  # a tie goes to the smaller rate
