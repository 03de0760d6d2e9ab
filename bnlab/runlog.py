"""The run directory: bnlab writes it here (`RunDir`, and the optional wandb mirror) and reads it back here
into tidy pandas tables (`load`, `runs`, `metrics`, `activations`, `probes`); wandb is never needed. The public
way in:

    from bnlab import runlog
    runs = runlog.load(["results/runs/cpu/fig1"])      # sweep folders or run folders, any mix
    curve = runlog.metrics(runs.path.iloc[0])          # one row per evaluation
    acts = runlog.activations(runs.path.iloc[0])       # one row per probe and hidden layer

Layout of a run directory (the names are this module's constants):
  config.yaml        CONFIG: the resolved config
  metrics.jsonl      METRICS: one row per evaluation (step, train/test loss and accuracy, steps/s)
  activations.jsonl  ACTIVATIONS: one row per (probe step, hidden layer): percentiles, moments, histogram
  probes.jsonl       PROBES: ICS and landscape rows, measured before that step's update
  checkpoint.pt      CHECKPOINT: while the run is unfinished, everything needed to resume bitwise
  model.pt           MODEL: the final weights, where trainer.save_model asks for them
  summary.json       SUMMARY: written last; with status finished/diverged it marks the run as done
  error.txt          ERROR: the traceback, if the run failed
Every file is written under a temporary name and renamed, so a kill never leaves a truncated one.
"""

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
import torchvision
from omegaconf import DictConfig, OmegaConf

from bnlab.config import REPO_ROOT, flat_schema_values, flatten, schema_values

CONFIG, METRICS, ACTIVATIONS, PROBES = "config.yaml", "metrics.jsonl", "activations.jsonl", "probes.jsonl"
CHECKPOINT, MODEL, SUMMARY, ERROR = "checkpoint.pt", "model.pt", "summary.json", "error.txt"
DONE = ("finished", "diverged")  # a run with either status is never retrained


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def git_dirty() -> bool | None:
    """Whether the working tree differs from git_sha's commit (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache  # the processor does not change under a running process
def cpu_name() -> str:
    """Model, family/model numbers and vector width, e.g. 'AMD EPYC (family 25, model 1, AVX2)': two "AMD EPYC"
    machines here differed 2.5x in speed, so speeds compare only within one."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, value in
              (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    name = " ".join(fields.get("model name", platform.machine()).split())
    return f"{name} (family {fields.get('cpu family')}, model {fields.get('model')}, {vector})"


def environment() -> dict:
    return {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpu": cpu_name(), "git_sha": git_sha(), "git_dirty": git_dirty(),
    }


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill; everything after the checkpoint is redone anyway
            break
    return rows


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.summary_path = self.path / SUMMARY
        self.checkpoint_path = self.path / CHECKPOINT

    def summary(self) -> dict | None:
        try:
            return json.loads(self.summary_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, identity: str) -> bool:
        s = self.summary()
        return bool(s) and cast(dict, s).get("status") in DONE and cast(dict, s).get("identity") == identity

    def set_aside_if_superseded(self, identity: str, checkpoint_identity: str | None) -> Path | None:
        """A run trained under another config of this job (its summary, or else its checkpoint, holds another
        identity) is moved to <experiment>/.superseded/<time>/<run>/ rather than overwritten; Hydra's own .hydra/
        stays, as it already describes the new job. Returns where it went."""
        old = (self.summary() or {}).get("identity") or checkpoint_identity
        if not old or old == identity:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.path.parent / ".superseded" / stamp / self.path.name
        dest.mkdir(parents=True, exist_ok=True)
        for item in self.path.iterdir():
            if item.name != ".hydra":
                item.rename(dest / item.name)
        return dest

    def prepare(self, cfg: DictConfig) -> None:
        """Make the directory writable and drop what a different or failed earlier attempt left."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise PermissionError(f"cannot write the run directory {self.path} ({e.strerror}); "
                                  "choose a writable out_root=/path or hydra.run.dir=/path") from None
        for stale in (SUMMARY, ERROR):
            (self.path / stale).unlink(missing_ok=True)
        atomic_write_text(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

    def write_rows(self, name: str, rows: list[dict]) -> None:
        """Rewrite a JSONL file wholesale; used when resuming, to drop rows logged after the checkpoint."""
        atomic_write_text(self.path / name, "".join(json.dumps(r) + "\n" for r in rows))

    def append_rows(self, name: str, rows: list[dict]) -> None:
        with open(self.path / name, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=1, sort_keys=True))

    def write_error(self, text: str) -> None:
        atomic_write_text(self.path / ERROR, text)


# the shortened keys of a wandb run name; any other key is named by its last part
NAME_KEYS = {"norm": "", "data": "", "optim.lr": "lr", "seed": "s"}


def wandb_id(cfg: DictConfig, run_dir: Path, identity: str) -> str:
    """The run's identity and a hash of its place under out_root, so that moving out_root keeps the id; a run
    directory outside out_root (hydra.run.dir=...) is placed by its name alone."""
    run_dir, root = Path(run_dir).resolve(), Path(cfg.out_root).resolve()
    place = run_dir.relative_to(root) if run_dir.is_relative_to(root) else Path(run_dir.name)
    return f"{identity}_{hashlib.sha1(place.as_posix().encode()).hexdigest()[:8]}"


def wandb_name(experiment: str, run_dir: Path) -> str:
    """'fig1/batch,lr0.5,s1': the experiment, then the overrides that name the run directory (Hydra's
    override_dirname) with shortened keys (NAME_KEYS); a directory named otherwise is named as it is."""
    folder = Path(run_dir).name
    if folder == experiment:  # a single run without overrides: Hydra's run dir ends in the experiment
        return experiment
    parts = []
    for item in re.split(r",(?![^\[]*\])", folder):  # a comma inside [..] belongs to a list value
        key, sep, value = item.partition("=")
        parts.append(NAME_KEYS.get(key, key.rsplit(".", 1)[-1] + "=") + value if sep else item)
    return f"{experiment}/{','.join(parts)}"


def metric_values(row: dict) -> dict:
    """What wandb gets of a metrics row: its numbers."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float))}


def activation_values(rows: list[dict]) -> dict:
    """What wandb gets of one probe step's activation rows: each layer's percentiles, mean and std."""
    return {f"act/L{r['layer']}/{key}": v for r in rows for key, v in r.items()
            if key[0] == "p" or key in ("mean", "std")}


class WandbMirror:
    """Mirrors logged rows to wandb when `wandb.mode` is online or offline; a no-op when disabled.

    One wandb run per bnlab run (`wandb_id`), named by `wandb_name`, grouped by experiment and scale; resume="allow"
    makes a resumed run continue it instead of starting a second, and `replay` gives it the rows it lacks. The
    claims stay out of the config; the summary gets the final status, accuracies and stack size."""

    SUMMARY_KEYS = ("status", "steps", "diverged_at", "final_test_acc", "best_test_acc", "stack_size", "device")

    def __init__(self, cfg: DictConfig, run_dir: Path, identity: str):
        self.run, self.next_step = None, 0
        if cfg.wandb.mode == "disabled":
            return
        import wandb  # lazy: half a second and a background service, only when asked for

        config = cast(dict, OmegaConf.to_container(cfg, resolve=True))  # a DictConfig: a dict
        config.pop("claims", None)
        self.run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity,
                                  mode=cfg.wandb.mode, dir=str(run_dir), id=wandb_id(cfg, run_dir, identity),
                                  resume="allow", group=f"{cfg.experiment}/{cfg.scale}", job_type=cfg.scale,
                                  name=wandb_name(cfg.experiment, run_dir), tags=list(cfg.wandb.tags),
                                  notes=cfg.wandb.notes, reinit="finish_previous", config=config,
                                  settings=wandb.Settings(silent=True, console="off", init_timeout=30))
        self.next_step = self.run.step
        self.replay(Path(run_dir))

    def replay(self, run_dir: Path) -> None:
        """Log the run directory's rows (trimmed to the checkpoint) from the first step this wandb run lacks.
        Online, wandb resumes after the last step it holds (`run.step`); offline it cannot know and starts at 0,
        and every row is replayed: a SIGKILL loses the killed attempt's whole offline record, so the resumed
        attempt's record must hold the run's history from its first step to equal metrics.jsonl."""
        by_step: dict[int, dict] = {}
        for row in read_jsonl(run_dir / METRICS):
            by_step.setdefault(row["step"], {}).update(metric_values(row))
        for row in read_jsonl(run_dir / ACTIVATIONS):
            by_step.setdefault(row["step"], {}).update(activation_values([row]))
        for step in sorted(by_step):
            self._log(by_step[step], step)

    def log_metrics(self, row: dict) -> None:
        self._log(metric_values(row), row["step"])

    def log_activations(self, rows: list[dict], step: int) -> None:
        self._log(activation_values(rows), step)

    def _log(self, values: dict, step: int) -> None:
        if self.run is not None and step >= self.next_step:  # below: a step wandb holds, recomputed after a resume
            self.run.log(values, step=step)

    def close(self, exit_code: int = 0, summary: dict | None = None) -> None:
        if self.run is not None:
            if summary:
                self.run.summary.update({k: summary.get(k) for k in self.SUMMARY_KEYS})
                if summary.get("status") == "diverged":
                    self.run.tags = (*(self.run.tags or ()), "diverged")
            self.run.finish(exit_code=exit_code)
            self.run = None


# Reading run directories back

def run_config(run_dir: str | Path) -> DictConfig:
    """A run's resolved config, with the schema's default for every key the run predates: a key is added with a
    default that keeps the old behaviour (config.run_identity), so that is how the run trained."""
    return OmegaConf.merge(schema_values(), OmegaConf.load(Path(run_dir) / CONFIG))  # type: ignore[return-value]


EXPERIMENT_KEYS = ("claims", "section")  # config keys the runs table leaves out


def runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per run directory, with the flattened config (`optim.lr`, `norm.name`, ...), the summary (status,
    accuracies, steps/s, ...), `job_overrides` (the job's overrides as Hydra saved them) and `path`. A directory
    without a readable summary is a run that was interrupted and is reported as `incomplete`, never dropped."""
    rows = []
    for cfg_path in sorted(Path(sweep_dir).glob(f"*/{CONFIG}")):
        run_dir = cfg_path.parent
        # a key the run predates: its default, as in run_config (merging each config with the schema is slower)
        row = {**flat_schema_values(), **flatten(OmegaConf.to_container(OmegaConf.load(cfg_path)))}  # type: ignore[arg-type]
        # the report's keys describe the experiment, not the run: every run of it has the same ones
        row = {k: v for k, v in row.items() if k.split(".", 1)[0] not in EXPERIMENT_KEYS}
        try:
            summary = json.loads((run_dir / SUMMARY).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            summary = {"status": "incomplete"}
        row.update({f"summary.{k}" if k in row else k: v for k, v in summary.items()})
        overrides = run_dir / ".hydra" / "overrides.yaml"  # the job's command-line overrides, as Hydra saved them
        row["job_overrides"] = tuple(OmegaConf.load(overrides)) if overrides.is_file() else None
        row["path"] = str(run_dir)
        rows.append(row)
    return pd.DataFrame(rows)


def load(paths) -> pd.DataFrame:
    """`runs` of every path given: a run directory (it holds config.yaml) or a folder of them."""
    tables = []
    for p in map(Path, paths):
        if (p / CONFIG).is_file():
            t = runs(p.parent)
            tables.append(t[t.path == str(p)])
        else:
            tables.append(runs(p))
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True).drop_duplicates("path") if tables else pd.DataFrame()


def metrics(run_path: str | Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(Path(run_path) / METRICS))


def activations(run_path: str | Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(Path(run_path) / ACTIVATIONS))


def probes(run_path: str | Path) -> pd.DataFrame:
    """ICS and landscape probe rows (bnlab.probes), one per probe, measured before that step's update."""
    return pd.DataFrame(read_jsonl(Path(run_path) / PROBES))
