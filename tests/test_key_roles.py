"""config.KEY_ROLES is the one table that decides a run's identity, its folder's name and whether it stacks."""

import dataclasses
import functools
import tarfile

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bnlab import runlog
from bnlab.archive import archive_path, unpack
from bnlab.config import (
    CONFIG_DIR,
    FOLDER_ROLES,
    KEY_ROLES,
    STACKABLE,
    TrainerConfig,
    flat_schema_values,
    flatten,
    may_stack,
    role,
    run_identity,
    unnamed_keys,
)
from bnlab.stack import stack_key
from bnlab.sweeps import job_identities, job_name, sweep_jobs
from tests.conftest import make_cfg

# A value each row's "a stack needs" refuses; a new row with a need needs one here
REFUSED = {"model.arch": "cnn", "norm.name": "batch_detached", "optim.block": "round_robin",
           "trainer.moment_penalty": 0.1, "trainer.alone": True, "wandb.mode": "offline", "device": "cuda"}


def test_hydra_leaves_out_of_a_folder_name_exactly_the_keys_whose_role_names_no_folder():
    """configs/train.yaml's exclude_keys are the schema's keys whose role is not one of FOLDER_ROLES (it reads
    them from the table): one that makes no numbers, or the scale (the sweep's directory names it)."""
    _, excluded = sweep_jobs("fig1", "cpu")
    assert excluded == set(unnamed_keys())
    assert excluded == {k for k in flat_schema_values() if role(k) not in FOLDER_ROLES}
    assert {"data.root", "out_root", "trainer.progress", "trainer.alone", "wandb.mode", "experiment", "stage",
            "scale"} <= excluded and not {"seed", "optim.lr", "model.init", "norm.name", "device"} & excluded
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["seed=3", "optim.lr=0.5", "trainer.alone=true", "wandb.mode=offline",
                                          "trainer.progress=false", "norm=batch"], return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == "norm=batch,optim.lr=0.5,seed=3"


@functools.cache
def override_key(override: str) -> str:
    return OverridesParser.create().parse_override(override).key_or_group


def folder_name(overrides: list[str], excluded: set[str]) -> str:
    """A run's folder name from its overrides, as Hydra names it (config_loader_impl.get_overrides_dirname)."""
    return ",".join(sorted(o for o in overrides if override_key(o) not in excluded))


def test_every_committed_run_keeps_its_folder_name():
    """Read from the committed evidence itself, so that a clean clone checks it too."""
    excluded, moved, seen = set(unnamed_keys()), [], 0
    for stage in ("exploratory", "confirmatory"):
        with tarfile.open(archive_path("cpu", stage), "r:xz") as tar:
            for member in tar:
                experiment, folder, *rest = member.name.split("/") + ["", ""]
                if rest[:2] == [".hydra", "overrides.yaml"]:
                    seen += 1
                    overrides = yaml.load(tar.extractfile(member).read(), Loader=yaml.CSafeLoader)
                    moved += [f"{experiment}/{folder}"] if folder_name(overrides, excluded) != folder else []
    assert seen > 4000 and not moved, moved[:5]


def test_a_logging_switch_leaves_the_identity_as_it_is(data_root, tmp_path):
    """Each TrainerConfig key and each wandb key with role "report", flipped, is the same run."""
    switches = [f"trainer.{f.name}" for f in dataclasses.fields(TrainerConfig) if role(f"trainer.{f.name}") == "report"]
    switches += [f"wandb.{k}" for k in ("mode", "project", "entity", "notes")]
    assert {"trainer.progress", "trainer.alone"} <= set(switches)
    base = make_cfg(data_root, tmp_path)
    flipped = {"trainer.progress": "true", "trainer.alone": "true", "wandb.mode": "offline",
               "wandb.project": "other", "wandb.entity": "someone", "wandb.notes": "a note"}
    assert set(switches) == set(flipped)  # a new switch: say here what flipping it means
    for key, value in flipped.items():
        assert run_identity(make_cfg(data_root, tmp_path, [f"{key}={value}"])) == run_identity(base), key
    assert run_identity(make_cfg(data_root, tmp_path, ["trainer.param_norms=true"])) != run_identity(base)


@pytest.mark.parametrize("name,stage", [("fig1", "exploratory"), ("one_layer_at_a_time", "exploratory"),
                                        ("dropout", "exploratory"), ("bn_inference", "confirmatory")])
def test_committed_runs_keep_their_identity(name, stage, tmp_path):
    """The identity train gives each committed run's job now is the one its summary.json records (the runs as
    committed, unpacked here)."""
    unpack(archive_path("cpu", stage), tmp_path, only=name)
    runs = runlog.runs(tmp_path / name)
    _, excluded = sweep_jobs(name, "cpu")
    named = [job_name(o, excluded) for o in runs.job_overrides]
    now = job_identities(name, "cpu", set(named))
    assert [now[n] for n in named] == list(runs.identity)


def test_what_a_stack_needs_is_read_from_the_table(data_root, tmp_path):
    """A run that holds a value a row refuses has no stack key; the rows are the only conditions."""
    needs = {key for key, (_, need) in KEY_ROLES.items() if need}
    assert needs == set(REFUSED)
    base = flatten(OmegaConf.to_container(make_cfg(data_root, tmp_path), resolve=True))
    stackable = ("none", "batch")
    assert may_stack(base, stackable) and stack_key(make_cfg(data_root, tmp_path)) is not None
    for key, value in REFUSED.items():
        assert not may_stack({**base, key: value}, stackable), key
    assert [k for k, (_, need) in KEY_ROLES.items() if need == STACKABLE] == ["norm.name"]
    for override in ("model=cnn", "wandb.mode=offline", "optim.block=round_robin", "trainer.alone=true",
                     "trainer.moment_penalty=0.1"):
        assert stack_key(make_cfg(data_root, tmp_path, [override])) is None, override
    members = ["seed=4", "optim.lr=0.7", "model.dropout=0.2", "wandb.project=x", "experiment=fig1"]
    assert stack_key(make_cfg(data_root, tmp_path, members)) == stack_key(make_cfg(data_root, tmp_path))

