"""Every experiment config, end to end at smoke scale on the fixture datasets: sweep, then report."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from bnlab.report import experiment_names
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_report(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    common = [f"data.root={data_root}", "data.download=false", "data.verify=false", f"out_root={out / 'runs'}"]
    names = experiment_names()
    # the in-process launcher: no worker start-up per experiment (joblib is covered by test_cli); two
    # experiments at a time, as `make reproduce` runs them, one per core
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda name: run_cli(["bnlab.train", f"experiment={name}", "scale=smoke",
                                                 "hydra/launcher=basic", *common]), names)
        failures = {name: r.stderr[-2000:] for name, r in zip(names, results, strict=True) if r.returncode != 0}
    r = run_cli(["bnlab.report", "--scale", "smoke", "--out-dir", str(out / "report"), *common])
    return out, failures, r


def test_every_experiment_sweeps_at_smoke_scale(smoke_report):
    out, failures, _ = smoke_report
    assert not failures, failures
    for name in experiment_names():
        runs = list((out / "runs" / "smoke" / name).glob("*/summary.json"))
        assert runs, f"{name} wrote no run"


def test_report_has_a_row_and_a_figure_for_every_claim(smoke_report):
    out, _, r = smoke_report
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report" / "REPORT.md").read_text()
    from bnlab.report import experiment_config

    for name in experiment_names():
        for claim in experiment_config(name, "smoke").claims:
            assert f"**{claim}**" in report, claim
        assert list((out / "report" / "figures").glob(f"{name}_*.png")), f"no figure for {name}"
    assert "no runs on disk yet" not in report
