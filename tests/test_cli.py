"""The real command line in a subprocess: Hydra composition, the joblib launcher, the output layout."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
SHORT = ["trainer.steps=20", "trainer.eval_every=10", "trainer.probe_every=10", "trainer.probe_size=50",
         "trainer.progress=false", "data.download=false"]


def test_single_run_writes_under_out_root(data_root, tmp_path):
    r = run_cli(["bnlab.train", f"data.root={data_root}", f"out_root={tmp_path}", "norm=batch",
                 "optim.lr=0.5", "seed=1", *SHORT])
    assert r.returncode == 0, r.stderr
    run = tmp_path / "cpu" / "adhoc"
    [d] = [p for p in run.iterdir() if p.is_dir()]
    assert "norm=batch" in d.name and "seed=1" in d.name
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "finished" and s["seed"] == 1 and s["threads"] == 1
    assert (d / ".hydra" / "config.yaml").exists()
    assert "finished after 20 steps" in r.stdout


def test_two_job_multirun_with_joblib(data_root, tmp_path):
    shown = [o for o in SHORT if o != "trainer.progress=false"]  # the bars shown, as a user sees them
    r = run_cli(["bnlab.train", "-m", f"data.root={data_root}", f"out_root={tmp_path}", "norm=none,batch",
                 "hydra.launcher.n_jobs=2", *shown])
    assert r.returncode == 0, r.stderr
    dirs = sorted(p.name for p in (tmp_path / "cpu" / "adhoc").iterdir() if p.is_dir())
    assert [d.split(",")[0] for d in dirs] == ["norm=batch", "norm=none"]  # named by the overrides
    for d in dirs:
        s = json.loads((tmp_path / "cpu" / "adhoc" / d / "summary.json").read_text())
        assert s["status"] == "finished" and s["threads"] == 1  # one thread per parallel job
    assert "[bnlab] sweep of 2 runs as 2 jobs: 2 finished, 0 diverged, 0 failed" in r.stdout
    bar = r.stderr.replace("\r", "\n").splitlines()
    assert any(line.startswith("sweep: 100%|") and "2/2 runs" in line for line in bar)  # one bar, by cost
    assert not any(line.lstrip().startswith(("norm=", "0%")) for line in bar)  # no bar per run


def test_misspelt_key_and_wrong_type_are_clear_errors(tmp_path):
    r = run_cli(["bnlab.train", f"out_root={tmp_path}", "optim.lrr=0.1"])
    assert r.returncode != 0 and "optim.lrr is not a config key; did you mean `optim.lr`?" in r.stderr
    assert "To append to your config" not in r.stderr  # with `+` the run would go ahead and ignore the key
    r = run_cli(["bnlab.train", f"out_root={tmp_path}", "optim.lr=fast"])
    assert r.returncode != 0 and "could not be converted to Float" in r.stderr
    r = run_cli(["bnlab.train", f"out_root={tmp_path}", "model.arch=rnn"])
    assert r.returncode != 0 and "Invalid value 'rnn', expected one of [mlp, cnn]" in r.stderr


def test_a_bad_value_in_one_job_of_a_sweep_stops_it_before_any_run_with_the_reason(tmp_path):
    """The sweeper leaves composing to bnlab's launcher, which composes every job before any run starts."""
    r = run_cli(["bnlab.train", "-m", f"out_root={tmp_path}", "optim.lr=0.1,fast"], env_extra={"HYDRA_FULL_ERROR": "0"})
    assert r.returncode != 0
    assert "Error merging override optim.lr=fast" in r.stderr and "could not be converted to Float" in r.stderr
    assert not [p for p in (tmp_path / "cpu" / "adhoc").iterdir() if p.is_dir()]  # no run directory


def test_hydra_finds_the_sweep_launcher_from_outside_the_repository(tmp_path):
    """The launcher is a Hydra plugin, registered by Hydra's own scan of hydra_plugins/, not by an import in
    bnlab: started in another folder, the installed package still composes its launcher."""
    r = run_cli(["bnlab.train", "--cfg", "hydra", "--package", "hydra.launcher"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "_target_: hydra_plugins.bnlab_launcher.stacking_launcher.StackingLauncher" in r.stdout
    assert "max_stack: 32" in r.stdout


def test_missing_data_offline_is_one_clear_message(tmp_path):
    r = run_cli(["bnlab.train", f"data.root={tmp_path / 'nowhere'}", f"out_root={tmp_path}", "data.download=false"],
                env_extra={"HYDRA_FULL_ERROR": "0"})
    assert r.returncode != 0
    assert "mnist is not available under data root" in r.stderr and "BNLAB_DATA" in r.stderr


def test_keys_below_claims_and_hydra_are_free(data_root, tmp_path):
    """An experiment names its claims and their params, and Hydra's settings are Hydra's: no key there is a
    misspelling of a schema key."""
    r = run_cli(["bnlab.train", "experiment=fig1", "+claims.I1_faster.params.extra=0.5", "hydra.job.chdir=false",
                 f"data.root={data_root}", f"out_root={tmp_path}", *SHORT])
    assert r.returncode == 0, r.stderr


def test_a_failed_download_says_why(tmp_path):
    """torchvision's MNIST error names only the file; the reason (here: a proxy that refuses, so that the test
    needs no network and downloads nothing where there is one) is in the message."""
    (tmp_path / "data").mkdir()
    refusing = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": "",
                "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    r = run_cli(["bnlab.train", f"data.root={tmp_path / 'data'}", f"out_root={tmp_path / 'out'}"], env_extra=refusing)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "(download failed: " in r.stderr and "Connection refused" in r.stderr
    assert not list((tmp_path / "out").rglob(".hydra"))  # no run folder


def test_submitit_local_launcher_runs_a_sweep(data_root, tmp_path):
    """The SLURM path (hydra-submitit-launcher) exercised locally: each job a separate submitit process."""
    r = run_cli(["bnlab.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                 f"data.root={data_root}", f"out_root={tmp_path}", "seed=0,1", *SHORT])
    assert r.returncode == 0, r.stderr
    runs = sorted((tmp_path / "cpu" / "adhoc").glob("*/summary.json"))
    assert len(runs) == 2 and all(json.loads(p.read_text())["status"] == "finished" for p in runs)
    assert list((tmp_path / "cpu" / "adhoc").glob(".submitit/*"))


def test_slurm_launcher_config_composes():
    r = run_cli(["bnlab.train", "experiment=fig1", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"])
    assert r.returncode == 0, r.stderr
    assert "SlurmLauncher" in r.stdout and "cpus_per_task: 1" in r.stdout


@pytest.mark.filterwarnings("ignore:'bnlab.train' found in sys.modules")  # runpy runs it again, as python -m
def test_the_trainer_run_as_main_pickles_for_the_sweep_workers():
    """`python -m bnlab.train` is __main__, whose functions and classes the launcher pickles by value; cloudpickle
    takes a name like `x.classes` or `x.backends` for a torch submodule it cannot pickle."""
    import inspect
    import runpy

    import cloudpickle

    main = runpy.run_module("bnlab.train", run_name="__mp_main__")
    ours = [o for o in main.values() if (inspect.isfunction(o) or inspect.isclass(o))
            and getattr(o, "__module__", "") == "__mp_main__"]
    assert len(ours) > 10
    for obj in ours:
        cloudpickle.dumps(obj)
