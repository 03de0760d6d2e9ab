"""Block-coordinate SGD (optim.block): one layer a step, and ICS measured under the run's own update."""

import copy

import pytest
import torch

from bnlab.config import ConfigError, run_identity
from bnlab.data import load
from bnlab.models import chosen_layer, init_model, layer_parameters
from bnlab.probes import internal_covariate_shift
from bnlab.runlog import read_jsonl
from bnlab.stack import stack_key
from bnlab.stepping import LOSSES, SingleModel
from bnlab.train import train
from tests.conftest import interrupt_at_evaluation, make_cfg

BATCH = 30


def single(data_root, tmp_path, block: str, norm: str = "batch", lr: float = 0.5):
    """A 3 x 100 MLP on the fixture's MNIST and its SingleModel stepping with `block`."""
    cfg = make_cfg(data_root, tmp_path, [f"norm={norm}", f"optim.block={block}"])
    data = load(cfg.data)
    net = init_model(cfg.model, cfg.norm, 0, data.shape, data.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    return net, SingleModel(net, opt, data.train.x, data.train.y, "cross_entropy", None, block=block), data


def batch(t: int) -> torch.Tensor:
    return torch.arange(t * BATCH, (t + 1) * BATCH).view(1, -1) % 600


def moved(net, before) -> list[int]:
    """The layers (input to output, head last) whose parameters differ from `before`."""
    return [i for i, (ps, saved) in enumerate(zip(layer_parameters(net), before, strict=True))
            if any(not torch.equal(p, s) for p, s in zip(ps, saved, strict=True))]


def snapshot(net) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in ps] for ps in layer_parameters(net)]


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_round_robin_moves_exactly_one_layer_a_step_in_order(data_root, tmp_path, norm):
    net, model, _ = single(data_root, tmp_path, "round_robin", norm)
    assert len(layer_parameters(net)) == 4  # three hidden blocks (with BN: gamma and beta too), then the head
    for t in range(9):
        before = snapshot(net)
        model.step(batch(t))
        assert moved(net, before) == [t % 4]


def test_largest_grad_picks_the_layer_with_the_largest_gradient():
    # by hand: Frobenius norms 5, 1, 6 (over both of the last layer's tensors), 6 (a tie goes to the lower layer)
    grads = [[torch.tensor([3.0, 4.0])], [torch.tensor([1.0])], [torch.tensor([0.0, 2.0]), torch.tensor([4.0, 4.0])],
             [torch.tensor([6.0]), None]]
    assert chosen_layer("largest_grad", 7, grads) == 2
    assert chosen_layer("round_robin", 7, grads) == 3
    assert chosen_layer("largest_grad", 0, grads[:2]) == 0


def test_largest_grad_moves_only_the_layer_with_the_largest_gradient(data_root, tmp_path):
    net, model, data = single(data_root, tmp_path, "largest_grad")
    picks = []
    for t in range(6):
        twin = copy.deepcopy(net)
        idx = batch(t)
        LOSSES["cross_entropy"](twin(data.train.x[idx[0]]), data.train.y[idx[0]]).backward()
        norms = [sum(p.grad.pow(2).sum().item() for p in ps) for ps in layer_parameters(twin)]
        before = snapshot(net)
        model.step(idx)
        assert moved(net, before) == [max(range(4), key=norms.__getitem__)]
        picks.append(moved(net, before)[0])
    assert picks  # which layer it is depends on the run; each step one


def test_block_all_is_todays_sgd_bitwise(data_root, tmp_path):
    net, model, data = single(data_root, tmp_path, "all")
    twin = copy.deepcopy(net)
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    for t in range(5):
        model.step(batch(t))
        idx = batch(t)[0]
        opt.zero_grad(set_to_none=True)
        LOSSES["cross_entropy"](twin(data.train.x.index_select(0, idx)), data.train.y.index_select(0, idx)).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters(), strict=True))
    # the default is left out of a run's identity: finished runs stay valid
    assert run_identity(make_cfg(data_root, tmp_path, ["optim.block=all"])) == run_identity(make_cfg(data_root,
                                                                                                 tmp_path))


def test_ics_under_block_coordinate_uses_the_actual_update(data_root, tmp_path):
    net, _, data = single(data_root, tmp_path, "round_robin", "batch", lr=0.5)
    x, y, loss, lr = data.train.x[:60], data.train.y[:60], LOSSES["cross_entropy"], 0.5
    full = internal_covariate_shift(net, x, y, loss, lr, [1, 2])
    assert internal_covariate_shift(net, x, y, loss, lr, [1, 2], "all", 5) == full  # full SGD: unchanged
    by_step = {t: {r["layer"]: r for r in internal_covariate_shift(net, x, y, loss, lr, [1, 2], "round_robin", t)}
               for t in range(4)}
    # the chosen layer (t mod 4) not below layer i: nothing below moves, so G' = G exactly
    for t, i in ((1, 1), (2, 1), (2, 2), (3, 1), (3, 2)):
        assert by_step[t][i]["l2"] == 0.0 and by_step[t][i]["chosen"] == t
    # the first layer chosen: layers 2 and 3 see it move, by its own gradient step only
    assert by_step[0][1]["l2"] > 0 and by_step[0][2]["l2"] > 0 and by_step[1][2]["l2"] > 0
    # known answer: with only layer 0 below layer 1, full SGD's probe of layer 1 moves exactly that layer too
    assert by_step[0][1]["l2"] == full[0]["l2"]
    # layer 3 under full SGD sees layers 1 and 2 move at once; round-robin at steps 0 and 1 one of them each
    assert by_step[0][2]["l2"] != full[1]["l2"]
    assert all(torch.equal(p, s) for p, s in zip(net.state_dict().values(), single(
        data_root, tmp_path, "round_robin", "batch")[0].state_dict().values(), strict=True))  # probes leave it


@pytest.mark.parametrize("override", ["optim.momentum=0.9", "optim.weight_decay=0.001"])
def test_block_coordinate_refuses_momentum_and_weight_decay(data_root, tmp_path, override):
    cfg = make_cfg(data_root, tmp_path, ["optim.block=round_robin", override])
    with pytest.raises(ConfigError, match="optim.block=round_robin moves one layer a step"):
        train(cfg, str(tmp_path / "run"))


def test_block_runs_train_alone_and_log_the_chosen_layer(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, ["norm=batch", "optim.block=round_robin", "trainer.ics_every=3",
                                         "trainer.ics_layers=[1,2]"])
    assert stack_key(cfg) is None and stack_key(make_cfg(data_root, tmp_path, ["norm=batch"])) is not None
    assert stack_key(make_cfg(data_root, tmp_path, ["norm=batch", "trainer.alone=true"])) is None
    s = train(cfg, str(tmp_path / "run"))
    assert s["status"] == "finished" and s["stack_size"] == 1
    rows = [r for r in read_jsonl(tmp_path / "run" / "probes.jsonl") if r["kind"] == "ics"]
    assert {r["chosen"] for r in rows} == {0, 1, 2, 3}  # every third step: the layers in turn
    assert all((r["l2"] == 0) == (r["chosen"] >= r["layer"]) for r in rows)


def test_resumed_round_robin_run_continues_its_turns(data_root, tmp_path, monkeypatch):
    """The turn comes from the step a resumed run starts at, so a cut and resumed run equals the whole one."""
    cfg = make_cfg(data_root, tmp_path, ["norm=batch", "optim.block=round_robin", "trainer.steps=30"])
    train(cfg, str(tmp_path / "whole"))
    interrupt_at_evaluation(monkeypatch, 3)  # the evaluation at step 20, after the checkpoint at 10
    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(tmp_path / "cut"))
    monkeypatch.undo()
    assert train(cfg, str(tmp_path / "cut"))["resumed"]
    keys = ("step", "test_loss", "test_acc", "train_loss")
    assert [{k: r[k] for k in keys} for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == \
        [{k: r[k] for k in keys} for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]
