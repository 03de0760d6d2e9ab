"""The per-example normalisers and Batch Renormalization, against their definitions; probe moments vs scipy."""

import numpy as np
import pytest
import scipy.stats
import torch
from omegaconf import OmegaConf

from bnlab.config import NormConfig
from bnlab.norms import BATCH_DEPENDENT, NORMS
from bnlab.probes import activation_stats
from tests.test_models import model


def make(name: str, n: int = 16, spatial: bool = False, **kw):
    return NORMS[name].build(n, spatial, OmegaConf.merge(OmegaConf.structured(NormConfig), {"name": name, **kw}))


def test_layer_norm_standardises_each_example_and_ignores_the_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 16) * 4 + 2
    ln = make("layer")
    y = ln(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    torch.testing.assert_close(ln(x[:1]), y[:1])  # a batch of one gives the same answer: no batch dependence
    assert "layer" not in BATCH_DEPENDENT and "group" not in BATCH_DEPENDENT


def test_group_and_layer_norm_on_a_hand_computed_example():
    """One example, four units (1, 2, 3, 5). GroupNorm with 2 groups standardises (1, 2) and (3, 5) apart:
    (-1, 1, -1, 1). LayerNorm uses all four: mean 2.75, variance 2.1875."""
    x = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    torch.testing.assert_close(make("group", 4, groups=2, eps=0.0)(x), torch.tensor([[-1.0, 1.0, -1.0, 1.0]]))
    torch.testing.assert_close(make("layer", 4, eps=0.0)(x), (x - 2.75) / 2.1875**0.5)
    torch.testing.assert_close(make("group", 4, groups=1, eps=0.0)(x), make("layer", 4, eps=0.0)(x))


def test_conv_group_norm_pools_each_groups_channels_and_positions():
    """In a conv layer a group's statistics run over its channels and all positions of one example."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5) * 3 + 1
    y = make("group", 8, spatial=True, groups=4, eps=0.0)(x).reshape(2, 4, -1)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-4, rtol=0)


def test_batch_renorm_is_bn_during_warmup_then_corrects_towards_running_statistics():
    torch.manual_seed(0)
    brn, bn = make("batch_renorm", renorm_warmup=3), make("batch")
    for _ in range(3):  # warm-up: identical to BN, running statistics included
        x = torch.randn(32, 16) * 2 + 1
        torch.testing.assert_close(brn(x), bn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(brn.running_mean, bn.running_mean)
    torch.testing.assert_close(brn.running_var, bn.running_var)
    x = torch.randn(32, 16) * 2 + 1
    mu, var = x.mean(0), x.var(0, unbiased=False)
    run_std = (brn.running_var + 1e-5).sqrt()
    r = ((var + 1e-5).sqrt() / run_std).clamp(1 / 3, 3)
    d = ((mu - brn.running_mean) / run_std).clamp(-5, 5)
    expected = (x - mu) / (var + 1e-5).sqrt() * r + d
    torch.testing.assert_close(brn(x), expected, atol=1e-5, rtol=1e-5)
    brn.eval()
    torch.testing.assert_close(brn(x), (x - brn.running_mean) / (brn.running_var + 1e-5).sqrt())



def test_detached_bn_normalises_as_bn_but_its_gradient_moves_the_bias_bn_ignores():
    """Ioffe & Szegedy §2 on a hand-sized case: a = u + b, normalised, loss sum(g * y). Through BN the loss does
    not depend on b, so its gradient is 0; with the statistics outside the gradient it is sum_i g_i * gamma / sigma,
    a step the next normalisation undoes: the bias can drift for ever while the loss stays put."""
    gen = torch.Generator().manual_seed(0)
    u, g = torch.randn(32, 4, generator=gen) * 3 + 1, torch.randn(32, 4, generator=gen)
    grads, outs = {}, {}
    for name in ("batch", "batch_detached"):
        b = torch.full((4,), 0.5, requires_grad=True)
        norm = make(name, 4)
        with torch.no_grad():
            norm.weight.fill_(2.0)
        outs[name] = norm(u + b)
        (g * outs[name]).sum().backward()
        grads[name] = b.grad
    torch.testing.assert_close(outs["batch_detached"], outs["batch"])  # the same forward pass
    torch.testing.assert_close(grads["batch"], torch.zeros(4), atol=1e-5, rtol=0)
    sigma = (u.var(0, unbiased=False) + 1e-5).sqrt()
    torch.testing.assert_close(grads["batch_detached"], g.sum(0) * 2.0 / sigma)
    assert "batch_detached" in BATCH_DEPENDENT


@pytest.mark.parametrize("name", ["layer", "group", "batch_renorm"])
def test_conv_layers_work_with_every_normaliser(name):
    net = model("cnn", name)  # 8 groups divide every channel count of the plan
    out = net(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_probe_skewness_kurtosis_and_jarque_bera_match_scipy():
    torch.manual_seed(0)
    net = model("mlp", "none", activation="relu", init="normal", init_std=0.05)
    x = torch.rand(400, 1, 28, 28) ** 3  # skewed inputs
    row = activation_stats(net, x, units=3, bins=10, hist_range=3.0)[0]
    a = net.blocks[0].linear(x.flatten(1)).detach().double().numpy()
    assert row["skew"] == pytest.approx(np.median(scipy.stats.skew(a, axis=0)), rel=1e-3)
    assert row["excess_kurtosis"] == pytest.approx(np.median(scipy.stats.kurtosis(a, axis=0)), rel=1e-3, abs=1e-4)
    jb = [scipy.stats.jarque_bera(a[:, u]).statistic for u in range(a.shape[1])]
    assert row["jarque_bera"] == pytest.approx(np.median(jb), rel=1e-3)
