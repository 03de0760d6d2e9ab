"""The config schema: every key bnlab accepts, its type and its default.

Hydra checks the composed YAML against these dataclasses, so `optim.lr=abc` or a misspelt key is an
error at start-up, and so is a value outside a fixed set (the Enums below; the error lists the options).
`bnlab.validate` then checks what a type cannot express (names in registries, ranges).
"""

import functools
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"  # Hydra's config files: train.yaml and its groups
# Paths in configs are anchored here, never at the working directory.
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
# Arithmetic for configs that tie one value to another (steps per epoch, linearly scaled learning rates).
OmegaConf.register_new_resolver("idiv", lambda a, b: int(a) // int(b), replace=True)
OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b), replace=True)


class Choice(str, Enum):
    """One of a fixed set of strings: equal to, printed, formatted and JSON-encoded as its value (what
    `enum.StrEnum` does from Python 3.11; this also runs on 3.10)."""

    def __str__(self) -> str:
        return self.value


class Preprocess(Choice):
    unit = "unit"  # pixels / 255
    standardize = "standardize"  # per-channel z-score
    binarize = "binarize"  # pixels > 0.5


class Arch(Choice):
    mlp = "mlp"
    cnn = "cnn"


class Init(Choice):
    normal = "normal"  # N(init_mean, init_std)
    xavier = "xavier"
    kaiming = "kaiming"
    default = "default"  # torch's own


class Loss(Choice):
    cross_entropy = "cross_entropy"
    mse = "mse"
    mse_sum = "mse_sum"  # Santurkar's DLN: summed squared error


class WandbMode(Choice):
    disabled = "disabled"
    offline = "offline"
    online = "online"


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"
    auto = "auto"  # the best present


class Scale(Choice):
    smoke = "smoke"
    cpu = "cpu"
    paper = "paper"


class Stage(Choice):
    exploratory = "exploratory"  # designs the criteria and chooses the rates
    confirmatory = "confirmatory"  # fresh seeds, judged by the frozen criteria


class Direction(Choice):
    ge = "ge"  # measured >= threshold passes
    le = "le"  # measured <= threshold passes


class ClaimKind(Choice):
    claim = "claim"  # evidence
    check = "check"  # holds by construction: confirms the implementation


class Effect(Choice):
    """The scale on which a claim's replicates are averaged and its resolution is declared."""

    difference = "difference"  # the value itself (points, a difference of two arms)
    ratio = "ratio"  # the natural log of the value (a ratio of two arms): a resolution of 0.1 is about 10%


class BlockRule(Choice):
    """Which layers one SGD step moves (a layer: a hidden block's linear map and normaliser, or the head)."""

    all = "all"  # every layer: plain SGD
    round_robin = "round_robin"  # one layer a step, input to output in turn (step t moves layer t mod layers)
    largest_grad = "largest_grad"  # one layer a step: the one whose gradient (Frobenius norm) is largest


class ConfigError(ValueError):
    """A config that type-checks but cannot run; the message says which key and what to use."""


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | cifar10 | gaussian_linear | gaussian_identity (synthetic)
    root: str = "${oc.env:BNLAB_DATA,${repo_root:}/data}"
    download: bool = True  # tried only when the files are missing; fails cleanly offline
    verify: bool = "${oc.env:BNLAB_DATA_VERIFY,true}"  # type: ignore[assignment]  # torchvision's md5 check (CIFAR); false accepts a rebuilt copy, with a warning
    preprocess: Preprocess = Preprocess.unit
    n_samples: int = 1000  # synthetic datasets only (Santurkar App. A: the DLN's 1000 samples)
    dim: int = 10  # synthetic datasets only: input and output width
    train_size: int = 0  # >0: train on the first n training examples only (a small set a network can overfit)


@dataclass
class ModelConfig:
    arch: Arch = Arch.mlp
    depth: int = 3  # hidden layers (mlp)
    width: int = 100  # units per hidden layer (mlp)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # cnn: conv stages, each 2x2 max-pooled
    activation: str = "sigmoid"  # sigmoid | relu | tanh | identity
    init: Init = Init.normal
    init_std: float = 0.1
    init_mean: float = 0.0  # normal init only; the DL Book §8.7.1 chain starts near w = 1
    bias: bool = True  # false: a purely linear map (deep linear networks); dropped anyway before a shifting norm
    dropout: float = 0.0  # after each hidden nonlinearity
    residual: bool = False  # mlp: each hidden layer after the first adds its input to its output (Bjorck's ResNets)


@dataclass
class NormConfig:
    name: str = "none"  # a key of bnlab.norms.NORMS
    eps: float = 1e-5
    momentum: float = 0.1  # running-statistics update rate (torch convention)
    affine: bool = True  # learn gamma and beta
    last_layers: int = 0  # >0: only the last this many hidden layers are normalised; the others keep their bias
    # Santurkar et al. Alg. 1 ("noisy" BN): per unit and step mu ~ U(-n_mu, n_mu), sigma ~ U(1, n_sigma);
    # per example m ~ U(mu - r_mu, mu + r_mu), s ~ N(sigma, r_sigma); a <- s * a + m.
    noise_mu: float = 0.5
    noise_sigma: float = 1.25
    noise_r_mu: float = 0.1
    noise_r_sigma: float = 0.1
    groups: int = 8  # group norm: channels per group = features / groups (Wu & He 2018 use 32 groups)
    renorm_rmax: float = 3.0  # batch renorm (Ioffe 2017): clip of r = sigma_B / sigma
    renorm_dmax: float = 5.0  # ... and of d = (mu_B - mu) / sigma
    renorm_warmup: int = 500  # steps of plain BN (r = 1, d = 0) before the clips open


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    # block-coordinate SGD: each step moves one layer only (the write-up's reader: layers stop shifting under each
    # other); momentum and weight decay would move the others too, so validate refuses them with it
    block: BlockRule = BlockRule.all


@dataclass
class TrainerConfig:
    steps: int = 1000  # the papers count steps, not epochs
    batch_size: int = 60
    classes_per_batch: int = 0  # >0: every batch holds examples of this many classes only (non-i.i.d. batches)
    eval_every: int = 500  # full test set, eval mode
    # >0: evaluations before the last score a fixed random subset of this many test examples (the same for every
    # run), so that steps-to-target can be read often at a fraction of the cost; the last scores the whole test set
    eval_subset: int = 0
    probe_every: int = 500  # activation percentiles on a fixed training batch
    probe_size: int = 500
    probe_units: int = 3  # units 0..k-1 of every hidden layer get their own percentiles
    hist_bins: int = 24
    hist_range: float = 6.0  # histogram over [-r, r]; mass outside is counted separately
    diverge_factor: float = 10.0  # interval-mean training loss above factor x initial loss = diverged
    loss: Loss = Loss.cross_entropy
    moment_units: int = 0  # >0: per-step change of batch mean and variance of units 0..k-1 (Santurkar Fig. 8)
    ics_every: int = 0  # >0: internal covariate shift, Santurkar Def. 2.1, on the training batch
    ics_layers: list[int] = field(default_factory=list)  # hidden layers (0-based) whose weight gradient is compared
    landscape_every: int = 0  # >0: loss and gradient along the gradient step (Santurkar Fig. 4)
    landscape_steps: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # multiples of lr
    checkpoint_every: int = 5000
    train_eval_size: int = 0  # >0: also score this many training examples in eval mode (train-test gap)
    # >0: at every probe, the singular values of each hidden layer's Jacobian with respect to the layer below, on
    # this many examples of the probe batch (MLPs whose normaliser maps each unit by an affine function of the batch)
    jacobian_examples: int = 0
    param_norms: bool = False  # also log each hidden layer's weight and bias norms at every evaluation
    # >0: train on loss + moment_penalty x the moment penalty (the write-up's alternative to normalising): per
    # hidden layer, the mean over units of (batch mean)^2 + (batch variance - 1)^2 of the nonlinearity's inputs
    moment_penalty: float = 0.0
    save_model: bool = False  # keep the final weights as model.pt (for post-hoc evaluation)
    alone: bool = False  # train without a stack even where one could share it (wall time per run, not per stack)
    progress: bool = True


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.disabled  # chosen once, never retried in another mode
    project: str = "bnlab"
    entity: str | None = None  # None: wandb's default entity
    tags: list[str] = field(default_factory=list)
    notes: str | None = None


@dataclass
class Amendment:
    """A criterion replaced after its results were seen: the original, kept beside the new one, and why."""

    statement: str = MISSING
    threshold: float = MISSING
    direction: Direction = Direction.ge
    verdict: str = MISSING  # what the original criterion gave, as last reported
    why: str = MISSING


@dataclass
class Claim:
    """One claim's registered criterion; bnlab.claims says how a verdict follows from it (docs/method.md)."""

    source: str = MISSING  # paper, section, figure
    statement: str = MISSING  # what is measured, in words, fixed before the confirmatory runs
    measures: str = ""  # what one replicate's value is, in words, for the report's one-line row
    setup: str = MISSING  # our setup, in a few words: model, data, steps
    paper: str = ""  # the paper's own words and numbers
    paper_effect: float | None = None  # the paper's effect on this claim's quantity, as a number
    paper_ref: str = ""  # where paper_effect is read: one arXiv version, page, figure
    confound: str = ""  # what else differs between the paper's arms, or between its setup and ours
    effect: Effect = Effect.difference  # the scale of the interval, the resolution and no_effect
    # this quantity without any effect (0 for a difference, 1 for a ratio); set: the claim gets a direction verdict
    no_effect: float | None = None
    # the magnitude criterion; left out where paper_effect is given: then MAGNITUDE_SHARE of the way from no_effect
    # to the paper's effect
    threshold: float | None = None
    resolution: float = MISSING  # delta: what limits the measurement, on the effect's scale; > 0
    direction: Direction = Direction.ge  # the claim's side of the threshold (and of no_effect)
    params: dict[str, float] = field(default_factory=dict)  # other fixed parts of the criterion (targets, ...)
    kind: ClaimKind = ClaimKind.claim
    cells: str = "all"  # over several cells: all (a conjunction), any, or an integer k (at least k cells)
    contrast: bool = False  # an "alike" claim: its contrast arm must fail the same criterion, else not testable
    amended: Amendment | None = None  # the criterion this one replaced, if it was changed after its results


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    experiment: str = "adhoc"  # names the sweep directory and the report page
    scale: Scale = Scale.cpu  # set by the scale group
    stage: Stage = Stage.exploratory  # set by the stage group
    # confirmatory stage: train only the learning rates the exploratory runs chose (the experiment's claims read no
    # other rate), a cell traded for the cost of fresh seeds
    chosen_rates_only: bool = False
    seed: int = 0
    threads: int = 1  # one thread per job is fastest here; results are bitwise only at a fixed count
    device: Device = Device.cpu  # recorded in the summary
    out_root: str = "${repo_root:}/results/runs"
    claims: dict[str, Claim] = field(default_factory=dict)
    section: str = ""  # the report heading its claims go under: one of bnlab.report.SECTIONS


ConfigStore.instance().store(name="train_schema", node=TrainConfig)

# In a row's "a stack needs": the normalisers bnlab.stack implements, which its registry knows (the schema imports
# no registry), so `may_stack` takes them from its caller.
STACKABLE = "stackable"

# What a config key (a name, or every name below it; the longest listed name decides) is to a run, in one place:
# whether it is part of the run's identity, names the run's folder, is shared by a stack, and what a stack needs.
# A key not listed makes the run's numbers: it is part of the identity, names the folder when set on the command
# line (a finished run is found by its folder), and is equal for every run of a stack.
#   member: makes the run's numbers, yet differs within a stack (own seed, optimiser, init, dropout)
#   sweep:  makes the run's numbers, equal for a whole sweep: the sweep's directory names it, the run's folder not
#   source: where the run reads its data: not its identity nor its folder; one for a whole stack, which loads the
#           data once
#   report: how it reports, where it writes, which sweep it belongs to, whether it may stack: not its identity nor
#           its folder (runs alike but for these are one run); free within a stack
# "A stack needs": the values a run must hold there to train in a stack (none listed: any); a run holding another
# trains alone, and its numbers do not change (a member matches its run alone to float rounding).
KEY_ROLES: dict[str, tuple[str | None, tuple | str]] = {
    # key                      role       a stack needs
    "data.root":              ("source", ()),
    "data.download":          ("source", ()),
    "data.verify":            ("source", ()),
    "model.arch":             (None, ("mlp",)),  # the stack is an MLP's
    "model.init":             ("member", ()),
    "model.init_std":         ("member", ()),
    "model.init_mean":        ("member", ()),
    "model.dropout":          ("member", ()),
    "norm.name":              (None, STACKABLE),
    "optim":                  ("member", ()),
    "optim.block":            ("member", ("all",)),  # a stacked step moves every layer
    "trainer.moment_penalty": (None, (0.0,)),  # the stacked step has no penalty term
    "trainer.alone":          ("report", (False,)),  # the one switch that keeps a run out of every stack
    "trainer.progress":       ("report", ()),
    "wandb":                  ("report", ()),
    "wandb.mode":             ("report", ("disabled",)),  # wandb keeps one run per process
    "device":                 (None, ("cpu",)),  # as it resolves on this machine: masks are drawn on the CPU
    "seed":                   ("member", ()),
    "scale":                  ("sweep", ()),
    "experiment":             ("report", ()),
    "stage":                  ("report", ()),
    "section":                ("report", ()),
    "chosen_rates_only":      ("report", ()),
    "claims":                 ("report", ()),
    "out_root":               ("report", ()),
    "hydra":                  ("report", ()),
}
IDENTITY_ROLES = (None, "member", "sweep")  # make the run's numbers
FOLDER_ROLES = (None, "member")  # name the run's folder
SHARED_ROLES = (None, "sweep", "source")  # equal for every run of a stack


def _row(key: str) -> tuple[str | None, tuple | str]:
    """The table's row for a flattened key: the longest listed name that is the key or above it."""
    names = [name for name in KEY_ROLES if key == name or key.startswith(name + ".")]
    return KEY_ROLES[max(names, key=len)] if names else (None, ())


def role(key: str) -> str | None:
    """The role of a flattened key ('optim.lr' is 'member'); None: it makes the run's numbers."""
    return _row(key)[0]


def in_identity(key: str) -> bool:
    return role(key) in IDENTITY_ROLES


def shared_in_stack(key: str) -> bool:
    return role(key) in SHARED_ROLES


def unnamed_keys() -> list[str]:
    """The schema's keys that a run's folder name leaves out, for Hydra's override_dirname.exclude_keys
    (configs/train.yaml): each key whose role names no folder. Hydra matches an override's whole key, so every
    key is listed, not the names above them; Hydra's own keys never name a folder."""
    return sorted(k for k in flat_schema_values() if role(k) not in FOLDER_ROLES)


OmegaConf.register_new_resolver("unnamed_keys", unnamed_keys, replace=True)


def may_stack(values: dict, stackable: Collection[str]) -> bool:
    """Whether a run of these flattened values may train in a stack: it holds what each row's "a stack needs"
    lists; `stackable`: the normalisers the stack implements (the STACKABLE rows)."""
    return all(values.get(key) in (stackable if needs == STACKABLE else needs)
               for key, (_, needs) in KEY_ROLES.items() if needs)



def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples so rows stay hashable."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


@functools.cache
def schema_values() -> dict:
    """The schema's values as nested dicts (building the structured config takes ~60 ms; the report asks per run).
    Read-only: a caller that changes them copies first."""
    return OmegaConf.to_container(OmegaConf.structured(TrainConfig))  # type: ignore[return-value]


@functools.cache
def flat_schema_values() -> dict:
    """The schema's values, flattened."""
    return flatten(schema_values())


def run_identity(cfg: DictConfig) -> str:
    """A hash of the values that make a run's numbers and differ from the schema's defaults.

    A finished run is reused only while this matches. Defaults are left out so that adding a new option
    (with a default that keeps old behaviour) does not invalidate finished runs; like a code change, a
    changed default is the author's to handle (delete the affected runs)."""
    values = flatten(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    defaults = flat_schema_values()
    kept = {k: v for k, v in values.items()
            if in_identity(k) and defaults.get(k, ...) != v}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]
