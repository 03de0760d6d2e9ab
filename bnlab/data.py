"""MNIST and CIFAR-10 through torchvision, held in memory as one tensor per split.

torchvision reads the files once; training then gathers batches by index from those tensors, which is
about ten times faster on a CPU than a per-sample DataLoader (docs/speed.md).
"""

import dataclasses
import functools
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from bnlab.config import REPO_ROOT, ConfigError

# What torchvision expects under data.root, per dataset: (sub-folder, files).
EXPECTED_FILES = {
    "mnist": ("MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
}


DEFAULT_DATA_ROOT = REPO_ROOT / "data"  # data.root's default, without BNLAB_DATA


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says what to do."""


@dataclass
class Split:
    x: torch.Tensor  # float32, N x C x H x W
    y: torch.Tensor  # int64, N


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


class _UnverifiedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader without its md5 checks: `ensure_files` made them (or data.verify=false
    skipped them, for a byte-different but pixel-identical copy)."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]  # None: existence only
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def _missing_message(name: str, root: Path, missing: list[str], reason: str) -> str:
    folder, _ = EXPECTED_FILES[name]
    return (
        f"{name} is not available under data root {root} ({reason}).\n"
        f"  expected in {root / folder}: {', '.join(missing)}\n"
        "  fix: point bnlab at a folder that holds them, with the environment variable BNLAB_DATA=/path "
        "or the override data.root=/path (the folder that contains "
        f"'{folder.split('/')[0]}'); or run once where the network is reachable so torchvision can download them."
    )


def _download_failure(e: Exception) -> str:
    """Why torchvision's download failed, in one line. CIFAR-10 lets urllib's URLError through; MNIST catches the
    error of each of its mirrors and raises one RuntimeError without a cause, whose first line names only the
    file: the reasons are on its lines after 'Tried <mirror>, got:'."""
    def unwrapped(text: str) -> str:  # str(URLError) is '<urlopen error REASON>'
        return text[len("<urlopen error "):-1] if text.startswith("<urlopen error ") else text

    tried = re.findall(r"^Tried (\S+), got:\n(.*)$", str(e), flags=re.MULTILINE)
    reasons = [f"{mirror}: {unwrapped(why)}" for mirror, why in tried] or [unwrapped(" ".join(str(e).split()))]
    return "; ".join(reasons) or type(e).__name__


def _read_torchvision(name: str, root: Path, train: bool, download: bool = False):
    """Download (checked against torchvision's md5s), or read files that `ensure_files` has checked."""
    if name == "mnist":
        return datasets.MNIST(root, train=train, download=download)
    return (datasets.CIFAR10 if download else _UnverifiedCIFAR10)(root, train=train, download=download)


def _to_split(ds) -> Split:
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST N,H,W; CIFAR N,H,W,C -> N,C,H,W
    return Split(x.contiguous().float().div_(255.0), torch.as_tensor(ds.targets, dtype=torch.int64))


def _preprocess(train: Split, test: Split, how: str) -> None:
    if how == "standardize":  # statistics of the training split only, applied to both
        mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
        std = train.x.std(dim=(0, 2, 3), keepdim=True)
        for s in (train, test):
            s.x.sub_(mean).div_(std)
    elif how == "binarize":  # Ioffe §4.1 speaks of "28x28 binary image" inputs
        for s in (train, test):
            s.x.copy_((s.x > 0.5).float())
    elif how != "unit":
        raise DataError(f"data.preprocess={how!r} is unknown; choose unit, standardize or binarize")


def gaussian_linear(n_samples: int, dim: int, seed: int = 123, identity: bool = False) -> Dataset:
    """Santurkar et al. App. A's deep-linear-network task: x ~ N(0, I), targets A x with A ~ N(0, 1) entries;
    with identity, targets y = x (the same inputs: A is drawn and set aside).

    The data are fixed (seed 123) across runs so that seeds vary only the initialisation; the training set
    doubles as the test set, since the claims concern optimisation.
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen)
    x = torch.randn(n_samples, dim, generator=gen)
    if identity:
        a = torch.eye(dim)
    split = Split(x, x @ a.T)
    return Dataset("gaussian_identity" if identity else "gaussian_linear", split, split, num_classes=dim)


# gaussian_identity: a teacher that a product of positive weights reaches without passing through zero (the
# Deep Learning Book chain, whose random scalar teacher A = -0.11 sent its weights' product into the P = 0
# saddle)
SYNTHETIC: dict[str, Callable[..., Dataset]] = {"gaussian_linear": gaussian_linear,
                                                "gaussian_identity": functools.partial(gaussian_linear, identity=True)}


def _checksum_message(name: str, folder: Path) -> str:
    return (f"{name} under {folder} does not match torchvision's checksums.\n"
            "  If this is a deliberately rebuilt copy with identical pixels (the CIFAR-10 in shared/data is one), "
            "pass data.verify=false or set BNLAB_DATA_VERIFY=false; otherwise delete the folder and download it again.")


def ensure_files(name: str, root: str, download: bool = True, verify: bool = True) -> Path:
    """Make sure a dataset's files are under root (downloading them if missing and allowed), and, with verify,
    that they match torchvision's md5s; returns the resolved root. A DataError's message says what to do.

    Cheap enough to run before a sweep launches (file checks, and for CIFAR-10 0.4 s of md5 here), so that missing
    data is one message rather than one traceback per job."""
    root_path = Path(root).expanduser().resolve()
    folder, files = EXPECTED_FILES[name]
    missing = [f for f in files if not (root_path / folder / f).is_file()]
    if missing:
        # a download would create a missing root, and a mistyped one would pass for a dataset folder; bnlab's own
        # default (the repository's data/) is the one folder it makes
        if download and root_path.resolve() == DEFAULT_DATA_ROOT:
            root_path.mkdir(exist_ok=True)
        if not root_path.is_dir():
            raise DataError(_missing_message(name, root_path, missing, "no such folder; bnlab downloads only into "
                                             "a folder that exists"))
        if not download:
            raise DataError(_missing_message(name, root_path, missing, "files missing, data.download=false"))
        try:
            _read_torchvision(name, root_path, True, download=True)
        except Exception as e:  # offline, a server refusing, a checksum that does not match
            raise DataError(_missing_message(name, root_path, missing,
                                             f"download failed: {_download_failure(e)}")) from None
    if name == "cifar10" and verify:  # torchvision checks MNIST only when downloading
        ref = datasets.CIFAR10
        if not all(check_integrity(str(root_path / folder / f), md5)
                   for f, md5 in [*ref.train_list, *ref.test_list, (ref.meta["filename"], ref.meta["md5"])]):
            raise DataError(_checksum_message(name, root_path / folder))
    return root_path


@functools.lru_cache(maxsize=4)  # a sweep worker process loads each dataset once, not once per job
def load_dataset(name: str, root: str, download: bool = True, verify: bool = True,
                 preprocess: str = "unit", n_samples: int = 1000, dim: int = 10) -> Dataset:
    if name in SYNTHETIC:
        return SYNTHETIC[name](n_samples, dim)
    if name not in EXPECTED_FILES:
        raise DataError(f"data.name={name!r} is unknown; choose one of {sorted([*EXPECTED_FILES, *SYNTHETIC])}")
    root_path = ensure_files(name, root, download, verify)
    folder = EXPECTED_FILES[name][0]
    splits = []
    for train in (True, False):
        try:
            ds = _read_torchvision(name, root_path, train)
        except Exception as e:  # truncated idx (AssertionError), broken pickle (EOFError, UnpicklingError)
            raise DataError(f"{name} under {root_path / folder} could not be read "
                            f"({type(e).__name__}: {e}); the files look corrupt or truncated: "
                            "delete them and download again.") from None
        split = _to_split(ds)
        if len(split.x) != len(split.y) or len(split.y) == 0:
            raise DataError(f"{name} under {root_path / folder}: {len(split.x)} images but {len(split.y)} "
                            "labels; the files are inconsistent or truncated: delete them and download again.")
        splits.append(split)
    if name == "cifar10" and not verify:
        warnings.warn(f"CIFAR-10 under {root_path / folder} loaded without torchvision's md5 check "
                      "(data.verify=false)", stacklevel=2)
    train_split, test_split = splits
    _preprocess(train_split, test_split, preprocess)
    return Dataset(name, train_split, test_split, num_classes=10)


def main() -> None:
    """`python -m bnlab.data [mnist] [cifar10]`: are the datasets where a run would look (data.root: BNLAB_DATA,
    else ./data; BNLAB_DATA_VERIFY)? `make reproduce` asks this first, so that missing data is one message."""
    from omegaconf import OmegaConf

    from bnlab.config import DataConfig

    data = OmegaConf.structured(DataConfig)
    names = sys.argv[1:] or list(EXPECTED_FILES)
    try:
        roots = {ensure_files(name, data.root, data.download, data.verify) for name in names}
    except DataError as e:
        sys.exit(f"[bnlab] {e}")
    print(f"[bnlab] {', '.join(names)} found under {', '.join(map(str, roots))}")


if __name__ == "__main__":
    main()


def load(d) -> Dataset:
    """The dataset a run's `data` config names, as the trainer and the analyses read it (data.train_size: the
    first n training examples, the same for every run and seed)."""
    data = load_dataset(d.name, d.root, d.download, d.verify, d.preprocess, d.n_samples, d.dim)
    if d.train_size:  # a new Dataset: load_dataset's is cached for the whole process and must stay whole
        data = dataclasses.replace(data, train=Split(data.train.x[:d.train_size], data.train.y[:d.train_size]))
    return data


class BatchOrder:
    """Fixed-size batches from seeded per-epoch permutations; its whole state fits in a checkpoint.

    With `classes` > 0 the batches are not i.i.d. (Ioffe 2017, §4.2): the permutation is reordered so that each
    batch holds `classes` classes, batch_size / classes examples of each, the classes of a batch drawn at random."""

    def __init__(self, n: int, batch_size: int, seed: int, labels: torch.Tensor | None = None, classes: int = 0):
        if batch_size > n:
            raise ConfigError(f"trainer.batch_size={batch_size} exceeds the {n} training examples")
        if classes and (labels is None or batch_size % classes):
            raise ConfigError(f"trainer.classes_per_batch={classes} must divide trainer.batch_size={batch_size} "
                              "and needs a labelled dataset")
        # `class_count`, not `classes`: pickled by value (as the sweep launcher pickles python -m bnlab.train),
        # cloudpickle takes an attribute named like a torch submodule (torch.classes) for an import of it
        self.n, self.batch_size, self.labels, self.class_count = n, batch_size, labels, classes
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = self._epoch(), 0

    def _epoch(self) -> torch.Tensor:
        perm = torch.randperm(self.n, generator=self.gen)
        if not self.class_count:
            return perm
        # runs of batch_size / classes examples of one class, then the runs shuffled and dealt into batches
        share = self.batch_size // self.class_count
        runs = [chunk for c in torch.unique(self.labels)
                for chunk in perm[cast(torch.Tensor, self.labels)[perm] == c].split(share) if len(chunk) == share]
        dealt = torch.randperm(len(runs), generator=self.gen)
        return torch.cat([runs[i] for i in dealt])

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.perm):  # drop the ragged tail: BN statistics need full batches
            self.perm, self.pos = self._epoch(), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"], s["pos"]
