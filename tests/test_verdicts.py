"""The verdict rule (bnlab.claims) on synthetic replicates with known answers: it converges as seeds are added, a
null effect reads reproduced rarely, an effect on the threshold stays inconclusive; cells combine strictly; cells
that cannot be measured are not testable, never dropped."""

import math

import numpy as np
import pytest

from bnlab.claims import (
    Criterion,
    Finding,
    chance_rate,
    combine,
    holds_in,
    judge,
    judge_cell,
    magnitude_threshold,
)

SIGN = Criterion(threshold=0.0, direction="ge", resolution=0.01, no_effect=0.0)  # "BN is better": a sign claim


def reproduced_share(mean: float, sd: float, n: int, c: Criterion, trials: int = 2000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([judge_cell(list(rng.normal(mean, sd, n)), c).verdict == "reproduced"
                          for _ in range(trials)]))


def test_a_true_effect_past_the_threshold_is_reproduced_with_probability_rising_to_one():
    """One standard deviation past the threshold: likelier with every seed added, certain with enough; the old
    every-seed-passes rule went the other way (p^n)."""
    c = Criterion(threshold=1.0, direction="ge", resolution=0.05)
    shares = [reproduced_share(2.0, 1.0, n, c) for n in (3, 5, 10, 40)]
    assert shares == sorted(shares) and shares[-1] > 0.99 and shares[0] < 0.5


def test_a_null_effect_under_a_sign_claim_reads_reproduced_at_most_five_percent_of_the_time():
    assert reproduced_share(0.0, 1.0, 5, SIGN, trials=10_000) <= 0.03  # one look: below 2.5% one-sided, less with delta
    assert chance_rate(trials=50_000) <= 0.05  # the two-stage rule: 5 seeds, then 5 more where inconclusive
    assert chance_rate(delta_over_sd=0.2, trials=50_000) < chance_rate(trials=50_000)


def test_an_effect_on_the_threshold_stays_inconclusive():
    c = Criterion(threshold=1.0, direction="le", resolution=0.05)
    assert reproduced_share(1.0, 0.5, 10, c) < 0.03
    rng = np.random.default_rng(1)
    for n in (5, 50, 500):  # more seeds narrow the interval, never below the resolution around the threshold
        values = rng.normal(0, 0.01, n)
        assert judge_cell(list(values - values.mean() + 1.0), c).verdict == "inconclusive"


def test_the_resolution_keeps_identical_replicates_off_a_threshold_they_sit_on():
    """Five seeds all exactly 0.5 against <= 0.5 (steps on the evaluation grid) are not a reproduction."""
    assert judge_cell([0.5] * 5, Criterion(0.5, "le", 0.02)).verdict == "inconclusive"
    assert judge_cell([0.4] * 5, Criterion(0.5, "le", 0.02)).verdict == "reproduced"
    assert judge_cell([0.6] * 5, Criterion(0.5, "le", 0.02)).verdict == "not reproduced"


def test_a_ratio_is_judged_on_the_log_scale():
    """Ratios 2 and 8 average to 4 on the log scale (not 5); the interval is reported back as ratios."""
    c = Criterion(threshold=1.0, direction="ge", resolution=0.1, effect="ratio", no_effect=1.0)
    cell = judge_cell([2.0, 8.0, 4.0], c)
    assert cell.mean == pytest.approx(4.0) and cell.low < 4.0 < cell.high
    assert judge_cell([0.0, 2.0], c).verdict == "not testable"  # log 0: no ratio to average


def test_magnitude_is_a_share_of_the_papers_effect_and_direction_is_against_no_effect():
    assert magnitude_threshold(30.0, 1.0, "ratio") == pytest.approx(math.sqrt(30))
    assert magnitude_threshold(10.0, 0.0, "difference") == 5.0
    c = Criterion(threshold=magnitude_threshold(1 / 14, 1.0, "ratio"), direction="le", resolution=0.1,
                  effect="ratio", no_effect=1.0)
    cell = judge_cell([0.5, 0.55, 0.45, 0.5, 0.52], c)  # twice as fast, where the paper was 14x
    assert (cell.direction, cell.verdict) == ("reproduced", "not reproduced")


@pytest.mark.parametrize("cells, rule, expected", [
    (["reproduced", "reproduced"], "all", "reproduced"),
    (["reproduced", "not reproduced"], "all", "not reproduced"),  # one failing cell refutes a conjunction
    (["reproduced", "inconclusive"], "all", "inconclusive"),
    (["reproduced", "not testable"], "all", "inconclusive"),  # at best inconclusive
    (["not reproduced", "not testable"], "all", "not reproduced"),
    (["not testable", "not testable"], "all", "not testable"),
    (["not reproduced", "reproduced"], "any", "reproduced"),
    (["not reproduced", "inconclusive"], "any", "inconclusive"),
    (["not reproduced", "not reproduced"], "any", "not reproduced"),
    (["reproduced", "reproduced", "not reproduced"], "2", "reproduced"),
    (["reproduced", "not reproduced", "not reproduced"], "2", "not reproduced"),
    (["reproduced", "inconclusive", "not reproduced"], "2", "inconclusive"),
])
def test_cells_combine_strictly_by_the_declared_rule(cells, rule, expected):
    assert combine(cells, rule) == expected


def test_a_cell_that_cannot_be_measured_is_shown_as_not_testable_with_why():
    f = Finding("x", {"relu": [1.0, 1.1, 0.9, 1.0, 1.05], "sigmoid": [1.0, math.inf, 1.0, 1.0, 1.0],
                      "tanh": [1.0, math.nan, 1.0, 1.0, 1.0]},
                untestable={"identity": "ICS = 0: nothing below moved"})
    j = judge(f, Criterion(0.5, "ge", 0.05))
    assert set(j.cells) == {"relu", "sigmoid", "tanh", "identity"}  # none dropped
    assert [j.cells[c].verdict for c in ("relu", "sigmoid", "tanh", "identity")] == \
        ["reproduced", "not testable", "not testable", "not testable"]
    assert "1 of 5 replicates not measurable (inf)" in j.cells["sigmoid"].why
    assert j.cells["identity"].why == "ICS = 0: nothing below moved"
    assert j.verdict == "inconclusive" and holds_in(j.cells) == "holds in 1 of 4 cells"


def test_an_alike_claim_whose_contrast_passes_too_is_not_testable():
    """LN's drop <= 3 points means nothing if BN's drop is <= 3 points as well."""
    c = Criterion(3.0, "le", 0.1, contrast=True)
    ln = [0.5, 1.0, 0.8, 0.2, 0.6]
    assert judge(Finding("LN_robust", ln, contrast=[2.4, 2.9, 2.6, 2.5, 2.8]), c).verdict == "not testable"
    assert judge(Finding("LN_robust", ln, contrast=[9.0, 11.0, 10.0, 12.0, 9.5]), c).verdict == "reproduced"


def test_an_inconclusive_cell_is_judged_again_on_the_extra_seeds_and_only_then():
    c = Criterion(0.0, "ge", 0.01, no_effect=0.0)
    first = Finding("x", {"a": [0.3, -0.1, 0.4, 0.2, 0.0], "b": [1.0, 1.1, 0.9, 1.2, 1.0]})
    more = Finding("x", {"a": [0.3, -0.1, 0.4, 0.2, 0.0, 0.3, 0.25, 0.2, 0.35, 0.3], "b": [-5.0] * 10})
    j = judge(first, c, more)
    assert judge(first, c).cells["a"].verdict == "inconclusive"
    assert j.cells["a"].verdict == "reproduced" and j.cells["a"].n == 10
    assert j.cells["b"].verdict == "reproduced" and j.cells["b"].n == 5  # decided at 5 seeds: final


def test_every_claim_declares_a_criterion_that_can_fail_and_pass():
    """Every claim of every experiment has a setup, a resolution > 0, a threshold or the paper's effect (never
    both) and, with the paper's effect, a no-effect value; its threshold is finite."""
    from bnlab.sweeps import experiment_config, experiment_names

    for name in experiment_names():
        for claim_id, claim in experiment_config(name, "cpu").claims.items():
            c = Criterion.of(claim)
            assert math.isfinite(c.threshold) and c.resolution > 0, (name, claim_id)
            if claim.paper_effect is not None:  # the threshold lies between no effect and the paper's effect
                lo, hi = sorted([claim.no_effect, claim.paper_effect])
                assert lo < c.threshold < hi, (name, claim_id)


def test_every_claim_says_in_one_line_what_it_measures():
    """Every claim (checks too) declares `measures`: the report's one-line row, at most 90 characters."""
    from bnlab.sweeps import experiment_config, experiment_names

    for name in experiment_names():
        for claim_id, claim in experiment_config(name, "cpu").claims.items():
            text = claim.measures
            assert text.strip() and len(text) <= 90 and "\n" not in text, (name, claim_id, text)


def test_seeds_that_all_never_reach_the_target_fail_rather_than_vanish():
    """Infinitely many steps in every seed is past any `le` threshold: not reproduced, not untestable; one such
    seed among finite ones leaves the cell not testable (no interval)."""
    c = Criterion(1.36, "le", 0.05, effect="ratio")
    assert judge_cell([math.inf] * 5, c).verdict == "not reproduced"
    assert judge_cell([math.inf, 1.0, 1.1, 0.9, 1.0], c).verdict == "not testable"


def test_a_contrast_only_judges_the_cells_where_the_claim_does_not_fail_plainly():
    c = Criterion(3.0, "le", 0.1, contrast=True)
    ln = {"a": [0.5, 1.0, 0.8, 0.2, 0.6], "b": [9.0, 9.5, 10.0, 9.2, 9.9]}
    contrast = {"a": [2.4, 2.9, 2.6, 2.5, 2.8], "b": [9.0, 11.0, 10.0, 12.0, 9.5]}
    j = judge(Finding("x", ln, contrast=contrast), c)
    assert j.cells["a"].verdict == "not testable" and "does not discriminate" in j.cells["a"].why
    assert j.cells["b"].verdict == "not reproduced"  # fails plainly whatever the contrast does
    assert j.verdict == "not reproduced"


def test_direction_and_magnitude_each_take_the_second_stage_only_where_they_were_inconclusive():
    c = Criterion(5.0, "ge", 0.01, no_effect=0.0)
    first = Finding("x", [0.3, -0.1, 0.4, 0.2, 0.0])  # magnitude: clearly below 5; direction: straddles 0
    more = Finding("x", [0.3, -0.1, 0.4, 0.2, 0.0, 0.3, 0.25, 0.2, 0.35, 0.3])
    cell = judge(first, c, more).cells[""]
    assert (cell.verdict, cell.direction, cell.n) == ("not reproduced", "reproduced", 5)
    assert cell.direction_read.n == 10 and cell.direction_read.low > 0  # the interval the direction read, kept
    from bnlab.report import shown

    assert shown(cell) == "0.16 [-0.107, 0.427] (n=5); the direction read 0.22 [0.0979, 0.342] (n=10)"


def test_the_chance_rate_is_the_rate_of_the_rule_itself():
    """claims.chance_rate simulates the two-stage rule in bulk; judge(), the code the report runs, reads null cells
    reproduced as often (within simulation error)."""
    rng = np.random.default_rng(7)
    c = Criterion(0.0, "ge", 1e-9, no_effect=0.0)
    hits = []
    for _ in range(3000):
        x = list(rng.standard_normal(10))
        hits.append(judge(Finding("x", x[:5]), c, Finding("x", x)).verdict == "reproduced")
    assert abs(np.mean(hits) - chance_rate(trials=100_000)) < 0.012
