"""Runs trained together as one stack must be the runs trained alone, member by member."""

import json
import math
import shutil

import pytest
import torch

from bnlab.models import init_model
from bnlab.norms import NORMS, STACKABLE_NORMS
from bnlab.runlog import atomic_torch_save, read_jsonl
from bnlab.stack import StackedMLP, stack_key
from bnlab.stepping import SingleModel, evaluate
from bnlab.train import train, train_runs
from tests.conftest import make_cfg, run_cli
from tests.test_train import history

# Members differ in seed, learning rate, momentum, weight decay, init scale and dropout; the third one diverges.
MEMBERS = [["seed=0", "optim.lr=0.1"], ["seed=1", "optim.lr=0.05", "optim.momentum=0.9", "model.dropout=0.3"],
           ["seed=2", "optim.lr=50.0", "model.init_std=1.0", "model.dropout=0.5"],
           ["seed=3", "optim.lr=0.1", "optim.weight_decay=0.001"]]
SHARED = ["model.activation=relu", "model.init=normal", "trainer.steps=300", "trainer.eval_every=50",
          "trainer.probe_every=100", "trainer.checkpoint_every=100", "trainer.save_model=true",
          "trainer.ics_every=100", "trainer.ics_layers=[1,2]", "trainer.landscape_every=150"]
LOGS = ("metrics.jsonl", "activations.jsonl", "probes.jsonl")

# How far a stacked member may stray from its run alone, in units of how far rounding alone moves that run.
# A stack's bmm rounds differently from a lone run's addmm, by less than an ulp of each weight per step; a rounding
# twin moves every weight by a whole ulp every step, so it strays at least as far from the run alone as an honest
# stack does (without BN or with it, the stack at 0.005-0.51 of a twin's deviation on AMD with AVX-512). Rounding
# can also flip a discrete event, such as a ReLU unit's sign on one example, after which the run follows another
# trajectory: on an Intel Xeon the un-normalised momentum-and-dropout member below lands there stacked and under
# one in four twins, ~50x further than the other three. So every run gets four twins, each with its own signs, and
# the reach is the furthest of them. A real bug (another member's batches, learning rate or BN statistics) strays
# 10^2-10^8 times further.
ROUNDING_MARGIN = 4.0
FLOOR = 1e-6  # a few float32 ulps: deviations below this are equal
TWIN_SEEDS = (0, 1, 2, 3)


def deviation(rows: list[dict], reference: list[dict], abs_: float = 1e-5) -> float:
    """Largest relative difference of any logged float between two runs' rows (inf where one is not finite)."""
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    worst = 0.0
    for row, ref in zip(rows, reference, strict=True):
        for key, value in ref.items():
            if key in ("train_time", "step") or not isinstance(value, float):
                continue
            if math.isfinite(value) != math.isfinite(row[key]):
                return math.inf
            if math.isfinite(value):
                worst = max(worst, abs(row[key] - value) / (abs(value) + abs_))
    return worst


def assert_close_rows(rows: list[dict], reference: list[dict], rel: float = 1e-4, abs_: float = 1e-5) -> None:
    """Rows equal to float rounding, for comparisons over a few short intervals where rounding has little to grow."""
    assert deviation(rows, reference, abs_) <= rel


def weight_deviation(a: dict, b: dict, abs_: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs() / (b[k].double().abs() + abs_)).max().item() for k in b)


def rounding_twin(monkeypatch, seed: int) -> None:
    """Make every run alone a rounding twin: after each step every weight moves one ulp up or down (random signs
    fixed by `seed`), what a kernel that rounds differently can do to it at most, on any CPU."""
    step, signs = SingleModel.step, torch.Generator().manual_seed(seed)

    def step_then_nudge(self, idx):
        out = step(self, idx)
        with torch.no_grad():
            for p in self.net.parameters():
                up = torch.randint(0, 2, p.shape, generator=signs, dtype=torch.bool)
                p.copy_(torch.nextafter(p, torch.where(up, math.inf, -math.inf)))
        return out

    monkeypatch.setattr(SingleModel, "step", step_then_nudge)


def deviations(tmp_path, kind: str, reference: str, i: int) -> dict[str, float]:
    """Member i's deviation from its `reference` run, per log file (first row only for a diverged run: the way up
    to the blow-up amplifies any difference) and for the final weights and BN statistics."""
    out = {}
    for name in LOGS:
        rows, ref = (read_jsonl(tmp_path / f"{k}{i}" / name) for k in (kind, reference))
        diverged = json.loads((tmp_path / f"{reference}{i}" / "summary.json").read_text())["status"] == "diverged"
        # probes hold differences of O(1) float32 losses (the landscape's range): below 1e-4 few digits are real
        abs_ = 1e-4 if name == "probes.jsonl" else 1e-5
        out[name] = deviation(rows[:1], ref[:1], abs_) if diverged else deviation(rows, ref, abs_)
    if (tmp_path / f"{reference}{i}" / "model.pt").exists():
        out["model.pt"] = weight_deviation(*(torch.load(tmp_path / f"{k}{i}" / "model.pt") for k in (kind, reference)))
    return out


def twin_reach(tmp_path, i: int) -> dict[str, float]:
    """How far rounding takes run i: per log, the furthest of its rounding twins. Chaotic runs (a noisy network's
    probes in training mode; a flipped ReLU) make one twin's reach a noisy measure."""
    twins = [deviations(tmp_path, f"twin{t}_", "alone", i) for t in TWIN_SEEDS]
    return {name: max(t[name] for t in twins) for name in twins[0]}


def strays(stack: dict[str, float], twin: dict[str, float]) -> list[str]:
    """What the stacked member logged further from its run alone than rounding can take it."""
    return [name for name in twin if stack[name] > ROUNDING_MARGIN * twin[name] + FLOOR]


def train_alone_and_twins(cfgs, tmp_path, monkeypatch) -> list[dict]:
    alone = [train(c, str(tmp_path / f"alone{i}")) for i, c in enumerate(cfgs)]
    for t in TWIN_SEEDS:
        twins = []
        for i, c in enumerate(cfgs):
            with monkeypatch.context() as m:
                rounding_twin(m, 100 * t + i)  # each run's own signs, whatever the other members are
                twins.append(train(c, str(tmp_path / f"twin{t}_{i}")))
        assert [s["status"] for s in twins] == [s["status"] for s in alone]
    return alone


# The settings a stackable normaliser's tests give it beyond norm=<name> (none unless listed): the moment tracker
# (Santurkar Fig. 8) where the experiments use it, groups that divide the width, a warm-up these runs leave.
NORM_SETTINGS = {"lpinf": ["trainer.moment_units=2"], "noisy_batch": ["trainer.moment_units=2"],
                 "group": ["norm.groups=4"], "batch_renorm": ["norm.renorm_warmup=50"]}
# Every normaliser whose registry entry can stack, so that a new one is tested here without a line of its own.
STACKED_NORMS = {name: [f"norm={name}", *NORM_SETTINGS.get(name, [])] for name in NORMS if name in STACKABLE_NORMS}
# ... and the stacked settings that are not a normaliser of their own
STACKED = {**STACKED_NORMS, "batch, moments": ["norm=batch", "trainer.moment_units=2"],
           # Bjorck's depth experiment: a residual MLP with BN on its last layer only (a bias below it)
           "residual, BN last": ["norm=batch", "norm.last_layers=1", "model.residual=true"]}


def test_the_settings_name_stackable_normalisers():
    assert NORM_SETTINGS.keys() <= STACKABLE_NORMS


@pytest.mark.parametrize("norm", STACKED)
def test_each_stacked_member_equals_its_run_trained_alone(data_root, tmp_path, monkeypatch, norm):
    extra = STACKED[norm]
    cfgs = [make_cfg(data_root, tmp_path, [*extra, *SHARED, *m]) for m in MEMBERS]
    assert len({stack_key(c) for c in cfgs}) == 1
    stacked = train_runs(cfgs, [str(tmp_path / f"stacked{i}") for i in range(len(cfgs))])
    alone = train_alone_and_twins(cfgs, tmp_path, monkeypatch)
    if norm in ("none", "batch"):  # the lr-50 member blows up (scale-invariant normalisers may survive it)
        assert [s["status"] for s in alone] == ["finished", "finished", "diverged", "finished"]
    for i, (f, a) in enumerate(zip(stacked, alone, strict=True)):
        assert (f["status"], f["steps"], f["diverged_at"], f["identity"]) == \
               (a["status"], a["steps"], a["diverged_at"], a["identity"])
        assert f["stack_size"] == 4 and a["stack_size"] == 1
        stack, twin = deviations(tmp_path, "stacked", "alone", i), twin_reach(tmp_path, i)
        assert not strays(stack, twin), (i, stack, twin)
        config = [(tmp_path / f"{kind}{i}" / "config.yaml").read_text() for kind in ("stacked", "alone")]
        assert config[0] == config[1]


# At a small batch with plain SGD the stack multiplies as x^T W^T and updates each weight in place (small_batch_step).
# Training at batch 4 is chaotic (rounding twins of a BN run stray by O(1) within a few hundred steps), so these
# runs are short enough for rounding not to have grown yet.
SMALL_BATCH_MEMBERS = [["seed=0", "optim.lr=0.02"], ["seed=1", "optim.lr=0.01", "model.dropout=0.3"],
                       ["seed=2", "optim.lr=0.02", "model.init_std=0.5"]]
SMALL_BATCH_SHARED = ["trainer.batch_size=4", "model.activation=relu", "model.init=normal", "trainer.steps=40",
                      "trainer.eval_every=20", "trainer.probe_every=20", "trainer.checkpoint_every=20",
                      "trainer.save_model=true"]


@pytest.mark.parametrize("norm", STACKED_NORMS)
def test_a_small_batch_stack_with_its_in_place_update_equals_its_runs_alone(data_root, tmp_path, monkeypatch, norm):
    shared = [*STACKED_NORMS[norm], *SMALL_BATCH_SHARED]
    cfgs = [make_cfg(data_root, tmp_path, [*shared, *m]) for m in SMALL_BATCH_MEMBERS]
    calls, small_batch_step = [], StackedMLP.small_batch_step
    with monkeypatch.context() as m:
        m.setattr(StackedMLP, "small_batch_step", lambda self, *a: calls.append(1) or small_batch_step(self, *a))
        stacked = train_runs(cfgs, [str(tmp_path / f"stacked{i}") for i in range(len(cfgs))])
    assert len(calls) == cfgs[0].trainer.steps  # every step took the small-batch path
    alone = train_alone_and_twins(cfgs, tmp_path, monkeypatch)
    assert alone[0]["status"] == "finished"  # noise on a network without a normaliser can blow the others up
    for i, (f, a) in enumerate(zip(stacked, alone, strict=True)):
        assert (f["status"], f["steps"]) == (a["status"], a["steps"])
        stack, twin = deviations(tmp_path, "stacked", "alone", i), twin_reach(tmp_path, i)
        assert not strays(stack, twin), (i, stack, twin)


@pytest.mark.parametrize("norm", [*STACKED, "mse_sum"])
def test_a_stack_scores_each_member_as_it_is_scored_alone(data_root, tmp_path, norm):
    """One eval-mode pass over a whole stack (or some of its members) gives each member's loss and accuracy as
    `evaluate` gives them for that member alone, after a few steps have made BN's running statistics differ."""
    extra = STACKED[norm] if norm != "mse_sum" else ["norm=batch", "trainer.loss=mse_sum", "model.activation=identity"]
    cfgs = [make_cfg(data_root, tmp_path, [*extra, "trainer.steps=30", *m]) for m in MEMBERS]
    loss = cfgs[0].trainer.loss
    nets = [init_model(c.model, c.norm, c.seed, (1, 28, 28), 10) for c in cfgs]
    lr = 1e-5 if loss == "mse_sum" else 0.01  # a summed loss takes far smaller steps
    opts = [torch.optim.SGD(n.parameters(), lr=lr * (k + 1)) for k, n in enumerate(nets)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 28, 28, generator=gen)
    y = torch.randn(300, 10, generator=gen) if loss != "cross_entropy" else torch.randint(0, 10, (300,), generator=gen)
    stack = StackedMLP(nets, opts, [torch.get_rng_state()] * len(nets), x, y, loss)
    for _ in range(5):
        stack.step(torch.randint(0, 300, (len(nets), 32), generator=gen))
    together, some = stack.evaluate(x, y, [0, 1, 2, 3]), stack.evaluate(x, y, [3, 1])
    alone = [evaluate(stack.member(k), x, y, loss) for k in range(len(nets))]
    assert len({a[0] for a in alone}) == len(alone)  # the members differ, so a mix-up would show
    for (t_loss, t_acc), (a_loss, a_acc) in zip(together, alone, strict=True):
        assert t_loss == pytest.approx(a_loss, rel=1e-5) and t_acc == a_acc
    assert some == [together[3], together[1]]


BUGS = {
    "another member's batches": ("step", lambda step: lambda self, idx: step(self, idx.roll(1, 0))),
    "another member's learning rate": ("__init__", lambda init: lambda self, *a: (
        init(self, *a), self.hyper.update(lr=self.hyper["lr"].roll(1)))[0]),
    "another member's BN statistics": ("member", lambda member: lambda self, k: (
        member(self, k), self.nets[k].load_state_dict({n: b[(k + 1) % len(self)] for n, b in self.buffers.items()},
                                                      strict=False))[0]),
}


@pytest.mark.parametrize("small_batch", [False, True])
@pytest.mark.parametrize("bug", BUGS)
def test_a_broken_stack_strays_further_than_rounding(data_root, tmp_path, monkeypatch, bug, small_batch):
    """The tests above have power: a stack with a real bug strays 10^2-10^8 times as far as the rounding twin,
    with the autograd update and with the in-place one."""
    members, shared = (SMALL_BATCH_MEMBERS[:2], SMALL_BATCH_SHARED) if small_batch else (MEMBERS[:2], SHARED)
    cfgs = [make_cfg(data_root, tmp_path, ["norm=batch", *shared, *m]) for m in members]
    alone = train_alone_and_twins(cfgs, tmp_path, monkeypatch)
    method, wrap = BUGS[bug]
    with monkeypatch.context() as m:
        m.setattr(StackedMLP, method, wrap(getattr(StackedMLP, method)))
        train_runs(cfgs, [str(tmp_path / f"stacked{i}") for i in range(len(cfgs))])
    assert all(s["status"] == "finished" for s in alone)
    assert any(strays(deviations(tmp_path, "stacked", "alone", i), twin_reach(tmp_path, i))
               for i in range(len(cfgs)))


@pytest.mark.parametrize("norm", [["norm=batch"], ["norm=noisy_batch", "trainer.moment_units=2"]])
def test_interrupted_stack_resumes_stacked_or_alone(data_root, tmp_path, monkeypatch, norm):
    """A stack killed after its step-100 checkpoints resumes, as a stack or run by run, to the same numbers
    (noise generators and moment trackers included)."""
    cfgs = [make_cfg(data_root, tmp_path, [*norm, *SHARED, *m]) for m in (MEMBERS[0], MEMBERS[1])]
    whole = train_runs(cfgs, [str(tmp_path / "whole0"), str(tmp_path / "whole1")])
    saved = []

    def save_then_die(obj, path):
        atomic_torch_save(obj, path)
        saved.append(path)
        if len(saved) == len(cfgs):
            raise KeyboardInterrupt  # both members checkpointed at step 100

    monkeypatch.setattr("bnlab.run.atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_runs(cfgs, [str(tmp_path / "cut0"), str(tmp_path / "cut1")])
    monkeypatch.undo()
    for i in range(len(cfgs)):
        shutil.copytree(tmp_path / f"cut{i}", tmp_path / f"single{i}")
    again = train_runs(cfgs, [str(tmp_path / "cut0"), str(tmp_path / "cut1")])
    alone = [train(c, str(tmp_path / f"single{i}")) for i, c in enumerate(cfgs)]
    for i in range(len(cfgs)):
        assert again[i]["resumed"] and alone[i]["resumed"] and alone[i]["stack_size"] == 1
        assert [r["step"] for r in read_jsonl(tmp_path / f"cut{i}" / "metrics.jsonl")] == list(range(0, 301, 50))
        # the stack resumed is the stack uninterrupted, bit for bit; alone, to float rounding
        assert history(tmp_path / f"cut{i}") == history(tmp_path / f"whole{i}")
        assert_close_rows(read_jsonl(tmp_path / f"single{i}" / "metrics.jsonl"),
                          read_jsonl(tmp_path / f"whole{i}" / "metrics.jsonl"))
        assert whole[i]["status"] == again[i]["status"] == alone[i]["status"] == "finished"


def test_runs_that_cannot_stack_have_no_key(data_root, tmp_path):
    base = make_cfg(data_root, tmp_path)
    assert stack_key(base) is not None
    assert stack_key(make_cfg(data_root, tmp_path, ["optim.lr=0.7", "seed=4", "model.dropout=0.2"])) == stack_key(base)
    assert stack_key(make_cfg(data_root, tmp_path, ["trainer.batch_size=30"])) != stack_key(base)
    assert stack_key(make_cfg(data_root / "elsewhere", tmp_path)) != stack_key(base)  # a stack loads its data once
    assert stack_key(make_cfg(data_root, tmp_path, ["trainer.moment_units=2"])) != stack_key(base)
    assert stack_key(make_cfg(data_root, tmp_path, ["model.residual=true"])) not in (None, stack_key(base))
    for alone in (["model=cnn"], ["wandb.mode=offline"], ["optim.block=round_robin"], ["trainer.alone=true"]):
        assert stack_key(make_cfg(data_root, tmp_path, alone)) is None, alone


@pytest.mark.slow
def test_stacking_launcher_writes_ordinary_run_directories(data_root, tmp_path):
    common = ["bnlab.train", "-m", f"data.root={data_root}", "data.download=false", "trainer.steps=40",
              "trainer.eval_every=20", "trainer.probe_every=20", "trainer.progress=false", "hydra.launcher.n_jobs=2",
              "norm=none,batch", "optim.lr=0.1,0.5", "model.dropout=0.0,0.2"]
    stacked = run_cli([*common, f"out_root={tmp_path / 'stacked'}"])
    assert stacked.returncode == 0, stacked.stderr
    alone = run_cli([*common, f"out_root={tmp_path / 'alone'}", "trainer.alone=true"])
    assert alone.returncode == 0, alone.stderr
    runs = sorted(p.parent.name for p in (tmp_path / "stacked" / "cpu" / "adhoc").glob("*/summary.json"))
    assert len(runs) == 8
    for name in runs:
        f, a = (tmp_path / kind / "cpu" / "adhoc" / name for kind in ("stacked", "alone"))
        fs, as_ = (json.loads((d / "summary.json").read_text()) for d in (f, a))
        assert fs["stack_size"] == 4 and as_["stack_size"] == 1  # two stacks of 4 (one per norm), one on each worker
        overrides = [[o for o in (d / ".hydra" / "overrides.yaml").read_text().splitlines()
                      if "out_root" not in o and "trainer.alone" not in o] for d in (f, a)]
        assert overrides[0] == overrides[1] and len(overrides[0]) > 5
        assert_close_rows(read_jsonl(f / "metrics.jsonl"), read_jsonl(a / "metrics.jsonl"))
