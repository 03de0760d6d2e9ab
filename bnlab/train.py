"""The one trainer. Every experiment in bnlab is a config for it plus an analysis of what it writes.

  python -m bnlab.train data=mnist model.activation=sigmoid norm=batch optim.lr=0.5 seed=1
  python -m bnlab.train -m norm=none,batch optim.lr=0.1,0.5 'seed=range(3)'
  python -m bnlab.train experiment=fig1              # an experiment config is a whole sweep
"""

import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnlab.config import run_identity
from bnlab.data import Dataset, load_dataset
from bnlab.models import ACTIVATIONS, ARCHS, INITS, Net, build_model
from bnlab.norms import BATCH_DEPENDENT, NORMALIZERS
from bnlab.probes import LOSSES, MomentTracker, activation_stats, internal_covariate_shift, landscape
from bnlab.runlog import RunDir, WandbMirror, atomic_torch_save, environment, read_jsonl


class ConfigError(ValueError):
    """A config that type-checks but cannot run; the message says which key and what to use."""


def validate(cfg: DictConfig) -> None:
    def choice(key: str, value: str, options) -> None:
        if value not in options:
            raise ConfigError(f"{key}={value!r} is not known; choose one of: {', '.join(sorted(options))}")

    choice("norm.name (norm=)", cfg.norm.name, NORMALIZERS)
    choice("model.activation", cfg.model.activation, ACTIVATIONS)
    choice("model.arch", cfg.model.arch, ARCHS)
    choice("model.init", cfg.model.init, INITS)
    choice("wandb.mode", cfg.wandb.mode, ("disabled", "offline", "online"))
    choice("trainer.loss", cfg.trainer.loss, LOSSES)
    for layer in cfg.trainer.ics_layers:
        if not 0 < layer < (cfg.model.depth if cfg.model.arch == "mlp" else len(cfg.model.channels)):
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
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"model.dropout={cfg.model.dropout} must be in [0, 1)")
    if cfg.norm.name in BATCH_DEPENDENT and cfg.trainer.batch_size < 2:
        raise ConfigError(f"norm={cfg.norm.name} normalises over the batch, so trainer.batch_size="
                          f"{cfg.trainer.batch_size} leaves nothing to normalise over; use a batch of 2 or more "
                          "or a per-example normaliser (norm=none)")


class BatchOrder:
    """Fixed-size batches from seeded per-epoch permutations; its whole state fits in a checkpoint."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ConfigError(f"trainer.batch_size={batch_size} exceeds the {n} training examples")
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the ragged tail: BN statistics need full batches
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"], s["pos"]


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor, loss: str, chunk: int = 1000) -> tuple[float, float | None]:
    """Loss and accuracy in eval mode (running statistics), the way a deployed model is scored.

    Cross-entropy and `mse` are averaged; `mse_sum` is summed over the whole set, as it is trained."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        if loss == "cross_entropy":
            total += F.cross_entropy(out, y[i:i + chunk], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + chunk]).sum().item()
        else:
            total += F.mse_loss(out, y[i:i + chunk], reduction="sum").item()
    model.train(was_training)
    if loss == "cross_entropy":
        return total / len(x), correct / len(x)
    return (total if loss == "mse_sum" else total / y.numel()), None


def _dataset(cfg: DictConfig) -> Dataset:
    d = cfg.data
    return load_dataset(d.name, d.root, d.download, d.verify, d.preprocess, d.n_samples, d.dim)


def train(cfg: DictConfig, out_dir: str) -> dict:
    """Train one run into out_dir and return its summary. Resumes from a checkpoint; skips a finished run."""
    validate(cfg)
    run = RunDir(out_dir)
    identity = run_identity(cfg)
    if run.is_done(identity):
        return run.summary()  # type: ignore[return-value]
    torch.set_num_threads(cfg.threads)
    # Plain dataclasses, resolved once: a DictConfig read costs microseconds (an interpolation far more),
    # which at batch 2 was most of a training step.
    tc, oc = OmegaConf.to_object(cfg.trainer), OmegaConf.to_object(cfg.optim)
    run.prepare(cfg)
    data = _dataset(cfg)
    device = torch.device(cfg.device)
    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    test_x, test_y = data.test.x.to(device), data.test.y.to(device)
    # The probe batch and the scored training subset are the same for every run and seed, so traces compare.
    fixed = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(12345))
    probe_x = train_x[fixed[:tc.probe_size]]
    train_eval = fixed[:tc.train_eval_size]

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.norm, data.shape, data.num_classes).to(device)
    if cfg.model.arch == "cnn":
        model = model.to(memory_format=torch.channels_last)  # oneDNN's fast conv layout on CPU
    opt = torch.optim.SGD(model.parameters(), lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
    order = BatchOrder(len(train_x), tc.batch_size, cfg.seed)
    # Training loss and accuracy are averaged over each evaluation interval; `initial_loss` anchors divergence.
    # `probe_time` is what evaluation, probes and checkpoints cost on top of training.
    state = {"step": 0, "initial_loss": None, "loss_sum": 0.0, "correct": 0, "seen": 0, "train_time": 0.0,
             "probe_time": 0.0}

    loss_fn = LOSSES[tc.loss]
    classify = tc.loss == "cross_entropy"
    tracker = MomentTracker(model, tc.moment_units) if tc.moment_units else None

    ck = torch.load(run.checkpoint_path, weights_only=False) if run.checkpoint_path.exists() else None
    resumed = ck is not None and ck["identity"] == identity  # a checkpoint of another config is discarded
    if resumed:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        order.load_state_dict(ck["order"])
        torch.set_rng_state(ck["rng"])
        state = ck["state"]
        if tracker:
            tracker.load_state_dict(ck["tracker"])
    # Rows logged after the checkpoint are recomputed. Probes of the training batch are logged before that
    # step's update, so the checkpoint's own step is measured again.
    last = state["step"]
    keep = {"metrics.jsonl": lambda r: r["step"] <= last, "activations.jsonl": lambda r: r["step"] <= last,
            "probes.jsonl": lambda r: r["step"] < last}
    for name, ok in keep.items():
        run.write_rows(name, [r for r in read_jsonl(run.path / name) if ok(r)] if resumed else [])

    mirror = WandbMirror(cfg, run.path, name=run.path.name)
    status, diverged_at = "finished", None
    try:
        def log_eval(step: int) -> dict:
            test_loss, test_acc = evaluate(model, test_x, test_y, tc.loss)
            seen = max(state["seen"], 1)
            row = {"step": step, "test_loss": test_loss, "test_acc": test_acc,
                   "train_loss": state["loss_sum"] / seen if state["seen"] else None,
                   "train_acc": state["correct"] / seen if state["seen"] and classify else None,
                   "train_time": state["train_time"]}
            if tracker:
                row.update({f"{k}_L{m['layer']}": m[k] for m in tracker.rows() for k in ("dmean", "dvar")})
            if tc.train_eval_size:
                row["train_eval_loss"], row["train_eval_acc"] = evaluate(model, train_x[train_eval],
                                                                         train_y[train_eval], tc.loss)
            state.update(loss_sum=0.0, correct=0, seen=0)
            run.append_rows("metrics.jsonl", [row])
            mirror.log(row, step)
            return row

        def log_probe(step: int) -> None:
            rows = [{"step": step, **r} for r in
                    activation_stats(model, probe_x, tc.probe_units, tc.hist_bins, tc.hist_range)]
            run.append_rows("activations.jsonl", rows)
            mirror.log({f"act/L{r['layer']}/{k}": v for r in rows for k, v in r.items()
                        if k[0] == "p" or k in ("mean", "std")}, step)

        if state["step"] == 0:
            log_eval(0)
            log_probe(0)
        bar = tqdm(total=tc.steps, initial=state["step"], disable=not tc.progress, mininterval=2.0,
                   desc=run.path.name[:40], leave=False, file=sys.stderr)
        model.train()
        tick = time.perf_counter()
        while state["step"] < tc.steps:
            idx = order.next().to(device)
            x, y = train_x.index_select(0, idx), train_y.index_select(0, idx)
            done = state["step"]
            ics_now = tc.ics_every and done % tc.ics_every == 0
            landscape_now = tc.landscape_every and done % tc.landscape_every == 0
            if ics_now or landscape_now:  # on this step's batch, before its update; not timed as training
                paused = time.perf_counter()
                state["train_time"] += paused - tick
                rows = internal_covariate_shift(model, x, y, loss_fn, oc.lr, tc.ics_layers) if ics_now else []
                if landscape_now:
                    rows += landscape(model, x, y, loss_fn, oc.lr, tc.landscape_steps,
                                      seed=cfg.seed * 1_000_003 + done)  # random direction: own generator
                run.append_rows("probes.jsonl", [{"step": done, **r} for r in rows])
                tick = time.perf_counter()
                state["probe_time"] += tick - paused
            if tracker:
                tracker.active = True
            out = model(x)
            if tracker:
                tracker.active = False
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step = state["step"] = state["step"] + 1
            loss_value = loss.item()
            if state["initial_loss"] is None:
                state["initial_loss"] = loss_value
            state["loss_sum"] += loss_value * len(y)
            if classify:
                state["correct"] += (out.argmax(1) == y).sum().item()
            state["seen"] += len(y)
            interval_loss = state["loss_sum"] / state["seen"]
            if not math.isfinite(loss_value) or (step % tc.eval_every == 0 and
                                                 interval_loss > tc.diverge_factor * state["initial_loss"]):
                status, diverged_at = "diverged", step
                state["train_time"] += time.perf_counter() - tick
                log_eval(step)
                break
            if step % tc.eval_every == 0 or step % tc.probe_every == 0 or step % tc.checkpoint_every == 0 \
                    or step == tc.steps:
                paused = time.perf_counter()
                state["train_time"] += paused - tick
                if step % tc.eval_every == 0 or step == tc.steps:
                    log_eval(step)
                if step % tc.probe_every == 0 or step == tc.steps:
                    log_probe(step)
                if step % tc.checkpoint_every == 0 and step < tc.steps:
                    atomic_torch_save({"identity": identity, "model": model.state_dict(), "opt": opt.state_dict(),
                                       "order": order.state_dict(), "rng": torch.get_rng_state(),
                                       "state": state, "tracker": tracker.state_dict() if tracker else None},
                                      run.checkpoint_path)
                bar.update(step - bar.n)
                tick = time.perf_counter()
                state["probe_time"] += tick - paused
        bar.close()
    except BaseException:
        mirror.close(exit_code=1)
        raise
    mirror.close()
    metrics = read_jsonl(run.path / "metrics.jsonl")
    finite = [r["test_acc"] for r in metrics if r["test_acc"] is not None and math.isfinite(r["test_loss"])]
    summary = {
        "status": status, "identity": identity, "experiment": cfg.experiment, "seed": cfg.seed,
        "steps": state["step"], "diverged_at": diverged_at, "resumed": resumed,
        "final_test_acc": metrics[-1]["test_acc"] if status == "finished" else None,
        "best_test_acc": max(finite) if finite else None,
        "final_train_loss": metrics[-1]["train_loss"],
        "train_time_s": state["train_time"],
        "probe_time_s": state.get("probe_time"),  # evaluation, activation probes, checkpoints
        "steps_per_s": state["step"] / state["train_time"] if state["train_time"] else None,
        **environment(),
    }
    if tc.save_model:
        atomic_torch_save(model.state_dict(), run.path / "model.pt")
    run.write_summary(summary)
    run.checkpoint_path.unlink(missing_ok=True)
    return summary


def run_job(cfg: DictConfig, out_dir: str) -> dict:
    """`train` with the failure recorded: status and traceback land in the run directory, then it re-raises."""
    try:
        return train(cfg, out_dir)
    except (KeyboardInterrupt, ConfigError):
        raise
    except Exception:
        run = RunDir(out_dir)
        if run.path.is_dir():
            run.write_error(traceback.format_exc())
            run.write_summary({"status": "failed", "identity": run_identity(cfg), "experiment": cfg.experiment,
                               "seed": cfg.seed, "error": traceback.format_exc().strip().splitlines()[-1],
                               **environment()})
        raise


class CheckOutRoot(Callback):
    """Refuse an unwritable out_root before Hydra creates any run directory, with a message that says why."""

    def _check(self, config: DictConfig) -> None:
        root = Path(config.out_root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as e:
            sys.exit(f"[bnlab] cannot write results under out_root={root} ({e.strerror}); "
                     "pass a writable folder: out_root=/path")

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    summary = run_job(cfg, HydraConfig.get().runtime.output_dir)
    acc = summary.get("final_test_acc")
    print(f"[bnlab] {HydraConfig.get().runtime.output_dir}: {summary['status']} after {summary['steps']} steps"
          + (f", test acc {acc:.4f}" if acc is not None else "")
          + (f", {summary['steps_per_s']:.0f} steps/s" if summary.get("steps_per_s") else ""))


if __name__ == "__main__":
    main()
