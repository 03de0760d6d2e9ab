"""Every experiment config, end to end at smoke scale on the fixture datasets: sweep, then report."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from bnlab.archive import pack
from bnlab.sweeps import experiment_names, sweep_jobs
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
    # an exploratory run beside a sweep, with an override the sweep does not make: the report must leave it out
    explore = run_cli(["bnlab.train", "experiment=dlbook_chain", "scale=smoke", "hydra/launcher=basic", "model.depth=3",
                       "norm=none", "optim.lr=1e-3", "trainer.steps=20", *common])
    failures.update({"explore": explore.stderr[-2000:]} if explore.returncode else {})
    # a run trained under an earlier config of its experiment (say, other steps): its summary holds that
    # config's identity, and the report must leave it out until the sweep retrains it
    stale = sorted((out / "runs" / "smoke" / "fig1").glob("*/summary.json"))[0]
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "identity": "0123456789ab"}))
    r = run_cli(["bnlab.report", "--scale", "smoke", "--out-dir", str(out / "report"), *common])
    return out, failures, r, stale.parent


def test_every_experiment_sweeps_at_smoke_scale(smoke_report):
    out, failures, _, _ = smoke_report
    assert not failures, failures
    for name in experiment_names():
        runs = list((out / "runs" / "smoke" / name).glob("*/summary.json"))
        assert runs, f"{name} wrote no run"


def test_report_has_a_row_and_a_figure_for_every_claim(smoke_report):
    out, _, r, _ = smoke_report
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report" / "REPORT.md").read_text()
    from bnlab.sweeps import experiment_config

    for name in experiment_names():
        page = (out / "report" / "report" / f"{name}.md").read_text()
        for claim in experiment_config(name, "smoke").claims:
            assert f"[{claim}](report/{name}.md#{claim.lower()})" in report, claim  # the front page links ...
            assert f"\n## {claim}\n" in page, claim  # ... to the claim's section on its experiment's page
        assert list((out / "report" / "figures").glob(f"{name}_*.png")), f"no figure for {name}"
        assert all((out / "report" / "report" / link).resolve().is_file()  # its figures and tables, one folder up
                   for link in re.findall(r"\]\((\.\./(?:figures|tables)/[^)]+)\)", page))
    assert "no runs on disk yet" not in report and "analysis returned no finding" not in report
    assert len(report) < 40_000


def test_report_leaves_out_runs_outside_the_sweep_or_trained_under_an_earlier_config(smoke_report):
    out, _, _, stale = smoke_report
    report = "".join((out / "report" / "report" / f"{name}.md").read_text() for name in ("fig1", "dlbook_chain"))
    explored = "smoke/dlbook_chain/model.depth=3,norm=none,optim.lr=0.001,seed=0,trainer.steps=20"
    assert "Left out of the analysis, not jobs of this experiment's current sweep" in report
    assert f"- `{explored}`" in report
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert runs[~runs.in_sweep].path.str.endswith(explored).tolist() == [True]
    jobs, _ = sweep_jobs("dlbook_chain", "smoke")
    assert ((runs.experiment == "dlbook_chain") & runs.in_sweep).sum() == len(jobs) == 12  # depths x norms x rates
    # the stale run: listed with the command that retrains it, and in runs.csv as stale, not as a seed
    stale_path = str(stale.relative_to(out / "runs"))
    assert "trained under an earlier config of this experiment (`make fig1 SCALE=smoke` retrains them)" in report
    assert f"- `{stale_path}`" in report
    assert runs[runs.stale].path.str.endswith(stale_path).tolist() == [True]


def test_the_archive_rebuilds_the_report_byte_for_byte(smoke_report, data_root):
    """What a fresh clone does: no run directories, the committed evidence, `python -m bnlab.report`."""
    out, _, r, _ = smoke_report
    archive = out / "evidence_smoke.tar.xz"
    assert pack(out / "runs" / "smoke", archive) == len(list((out / "runs" / "smoke").glob("*/*/config.yaml")))
    again = run_cli(["bnlab.report", "--scale", "smoke", "--out-dir", str(out / "rebuilt"), "--archive", str(archive),
                     f"data.root={data_root}", "data.download=false", "data.verify=false",
                     f"out_root={out / 'fresh'}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no runs under" in again.stdout and not list((out / "fresh" / "smoke").glob("*/*/checkpoint.pt"))
    pages = [p.relative_to(out / "report") for p in (out / "report" / "report").glob("*.md")]
    assert len(pages) == len(experiment_names())
    for name in ("REPORT.md", "runs.csv", *pages):
        assert (out / "rebuilt" / name).read_bytes() == (out / "report" / name).read_bytes(), name
