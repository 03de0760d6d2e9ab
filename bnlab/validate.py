"""What a config's types cannot say: names that must be in a registry, ranges, and keys that must agree.

The schema (bnlab.config) already rejects a wrong type and a value outside a fixed set (its Enums), and a
misspelt key unless it is added with `+`, which Hydra accepts for any key; `check_keys` refuses such keys, on the
command line (before Hydra, whose own message for a misspelt key suggests that `+`) and in a composed config.
This module sits above the registries it checks names against (normalisers, activations).
"""

import difflib
import functools
from collections.abc import Iterable

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from bnlab.config import CONFIG_DIR, ConfigError, flat_schema_values, flatten
from bnlab.models import ACTIVATIONS, hidden_layers
from bnlab.norms import BATCH_DEPENDENT, NORMS, PER_UNIT_AFFINE
from bnlab.runtime import resolve_device


@functools.cache
def _schema_keys() -> tuple[frozenset[str], tuple[str, ...]]:
    """Every key of the schema, nodes included ('optim' and 'optim.lr'), and the keys whose keys are free: the
    schema's open dicts (claims, named by the experiment) and Hydra's own settings."""
    flat = flat_schema_values()
    nodes = {key.rsplit(".", n)[0] for key in flat for n in range(key.count(".") + 1)}
    return frozenset(nodes), ("hydra", *(key for key, value in flat.items() if value == {}))


def check_keys(keys: Iterable[str]) -> None:
    """Refuse a flattened key ('optim.lrr') that the schema lacks, naming the closest one it has."""
    known, free = _schema_keys()
    unknown = [k for k in keys if k not in known and not any(k == f or k.startswith(f + ".") for f in free)]
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, flat_schema_values(), n=1)
        lines.append(f"{key} is not a config key" + (f"; did you mean `{close[0]}`?" if close else "")
                     + " (python -m bnlab.train --cfg job lists them)")
    if lines:
        raise ConfigError("\n".join(lines))


def command_line_keys(argv: list[str]) -> list[str]:
    """The config keys that a command line's overrides set or delete; config groups (norm=batch,
    hydra/launcher=...) are Hydra's to check, and so is an override it cannot parse."""
    try:
        overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_args(argv).overrides)
    except OverrideParseException:
        return []
    keys = [o.key_or_group for o in overrides]
    return [k for k in keys if "/" not in k and not (CONFIG_DIR / k).is_dir()]


def validate(cfg: DictConfig) -> None:
    check_keys(flatten(OmegaConf.to_container(cfg)))  # type: ignore[arg-type]
    def choice(key: str, value: str, options) -> None:
        if value not in options:
            raise ConfigError(f"{key}={value!r} is not known; choose one of: {', '.join(sorted(options))}")

    layers = hidden_layers(cfg.model)
    choice("norm.name (norm=)", cfg.norm.name, NORMS)
    choice("model.activation", cfg.model.activation, ACTIVATIONS)
    if resolve_device(cfg.device) != cfg.device and cfg.device != "auto":
        raise ConfigError(f"device={cfg.device} is not available here; use device=auto or device=cpu")
    for layer in cfg.trainer.ics_layers:
        if not 0 < layer < layers:
            raise ConfigError(f"trainer.ics_layers: {layer} is not a hidden layer with layers below it "
                              "(0-based; the first hidden layer has nothing below it)")
    positive = {"optim.lr": cfg.optim.lr, "trainer.steps": cfg.trainer.steps,
                "trainer.batch_size": cfg.trainer.batch_size, "trainer.eval_every": cfg.trainer.eval_every,
                "trainer.probe_every": cfg.trainer.probe_every, "trainer.checkpoint_every":
                cfg.trainer.checkpoint_every, "threads": cfg.threads, "model.depth": cfg.model.depth,
                "model.width": cfg.model.width, "norm.eps": cfg.norm.eps}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}={value} must be > 0")
    check_combinations(cfg, layers)


def check_combinations(cfg: DictConfig, layers: int) -> None:
    """Values each valid alone that do not go together, or that the model's `layers` hidden layers rule out."""
    if cfg.trainer.jacobian_examples and (cfg.model.arch != "mlp" or cfg.model.residual
                                          or cfg.norm.name not in PER_UNIT_AFFINE):
        raise ConfigError(f"trainer.jacobian_examples needs a plain MLP (model.residual=false) whose normaliser maps "
                          f"each unit by an affine function of the batch ({', '.join(sorted(PER_UNIT_AFFINE))}), not "
                          f"model.arch={cfg.model.arch} model.residual={cfg.model.residual} norm={cfg.norm.name}")
    if not 0 <= cfg.norm.last_layers <= layers:
        raise ConfigError(f"norm.last_layers={cfg.norm.last_layers} must be between 0 (every hidden layer) and the "
                          f"{layers} hidden layers")
    if cfg.model.residual and cfg.model.arch != "mlp":
        raise ConfigError("model.residual=true is for model=mlp (its hidden layers share one width)")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"model.dropout={cfg.model.dropout} must be in [0, 1)")
    if cfg.optim.block != "all" and (cfg.optim.momentum or cfg.optim.weight_decay):
        raise ConfigError(f"optim.block={cfg.optim.block} moves one layer a step, but optim.momentum="
                          f"{cfg.optim.momentum} and optim.weight_decay={cfg.optim.weight_decay} would move the others "
                          "too; use optim.momentum=0 optim.weight_decay=0 with it, or optim.block=all")
    if cfg.norm.name in BATCH_DEPENDENT and cfg.trainer.batch_size < 2:
        raise ConfigError(f"norm={cfg.norm.name} normalises over the batch, so trainer.batch_size="
                          f"{cfg.trainer.batch_size} leaves nothing to normalise over; use a batch of 2 or more "
                          "or a per-example normaliser (norm=none)")
