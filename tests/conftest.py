"""Tiny datasets written in the real on-disk formats, so the real torchvision loaders read them."""

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bnlab.config import REPO_ROOT

torch.set_num_threads(1)  # numbers compared across runs are bitwise only at a fixed thread count


def learnable_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose label is written into their brightness pattern, so a few steps learn something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, *shape))
    flat = images.reshape(n, -1)
    stripe = flat.shape[1] // 10
    for i, y in enumerate(labels):
        flat[i, y * stripe:(y + 1) * stripe] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = learnable_images(n, (28, 28), seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return root


def write_cifar(root: Path, per_batch: int = 40, n_test: int = 40) -> Path:
    """The python-pickle layout of cifar-10-batches-py (rows of 3072 = R, G, B planes of 32 x 32)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        x, y = learnable_images(n_test if name == "test_batch" else per_batch, (3, 32, 32), seed)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": y.tolist(), "data": x.reshape(len(x), -1),
                         "filenames": [f"{i}.png" for i in range(len(x))]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar(root)
    return root


def interrupt_at_evaluation(monkeypatch, n: int) -> None:
    """The n-th evaluation of a run (the first is at step 0) raises KeyboardInterrupt, as a kill would stop it;
    `monkeypatch.undo()` lets the next run go on."""
    import bnlab.stepping as stepping  # where every evaluation goes through `evaluate`

    real_eval, calls = stepping.evaluate, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    monkeypatch.setattr(stepping, "evaluate", interrupted)


def make_cfg(data_root: Path, out_root: Path, overrides: list[str] = ()):
    """The composed config exactly as the CLI would build it, shrunk to seconds."""
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"data.root={data_root}", "data.download=false", "data.verify=false", f"out_root={out_root}",
            "trainer.steps=30", "trainer.eval_every=10", "trainer.probe_every=10", "trainer.probe_size=64",
            "trainer.checkpoint_every=10", "trainer.progress=false", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def cli_environment() -> dict:
    """This process's environment for a CLI child, less the wandb service an in-process wandb test started here:
    a child would join it, and a run id such a test left open would read as in use."""
    import os

    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def run_cli(args: list[str], env_extra: dict | None = None, timeout: int = 300,
            cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**cli_environment(), "HYDRA_FULL_ERROR": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
