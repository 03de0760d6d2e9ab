"""Property tests behind the 'why does BN work' experiments (Ioffe §3.3, Santurkar Alg. 1, Def. 2.1, Thm 4.1,
Bjorck §3)."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bnlab.config import NormConfig
from bnlab.norms import NORMS, AlgOneNoise
from bnlab.probes import depth_profile, internal_covariate_shift, landscape, relative_loss, weight_grad_norms
from bnlab.runlog import read_jsonl
from bnlab.stepping import LOSSES
from bnlab.train import train
from tests.conftest import make_cfg
from tests.test_models import model

torch.set_default_dtype(torch.float32)


def test_alg1_noise_sampler_moments():
    torch.manual_seed(0)
    noise = AlgOneNoise(0.5, 1.25, 0.1, 0.1)
    mus, sigmas, m_dev, s_dev = [], [], [], []
    for _ in range(400):
        mu, sigma, m, s = noise.sample(500, 20)
        mus.append(mu)
        sigmas.append(sigma)
        m_dev.append(m - mu)
        s_dev.append(s - sigma)
    mus, sigmas = torch.cat(mus), torch.cat(sigmas)
    m_dev, s_dev = torch.cat(m_dev).flatten(), torch.cat(s_dev).flatten()
    # mu ~ U(-0.5, 0.5): mean 0, variance 1/12; sigma ~ U(1, 1.25): mean 1.125, variance 0.25^2/12
    assert abs(mus.mean()) < 0.01 and abs(mus.var() - 1 / 12) < 0.005
    assert mus.min() > -0.51 and mus.max() < 0.51
    assert abs(sigmas.mean() - 1.125) < 0.003 and abs(sigmas.var() - 0.25**2 / 12) < 0.0005
    # m ~ U(mu - 0.1, mu + 0.1): spread variance 0.2^2/12, bounded by 0.1; s ~ N(sigma, 0.1)
    assert abs(m_dev.mean()) < 1e-3 and abs(m_dev.var() - 0.2**2 / 12) < 1e-4 and m_dev.abs().max() <= 0.1
    assert abs(s_dev.mean()) < 1e-3 and abs(s_dev.std() - 0.1) < 1e-3


def test_noise_only_in_training_mode_and_after_bn():
    norm = NORMS["noisy_batch"].build(8, False, OmegaConf.structured(NormConfig))
    assert isinstance(norm[0], torch.nn.BatchNorm1d) and isinstance(norm[1], AlgOneNoise)
    x = torch.randn(32, 8)
    norm.eval()
    torch.testing.assert_close(norm(x), norm[0](x))


def test_lp_normalisers_on_a_hand_computed_batch():
    """One unit, batch (1, 3): centred to (-1, 1), divided by the un-centred scale (Santurkar §3.3: 'before
    shifting the mean'): mean |x| = 2, sqrt(mean x^2) = sqrt(5), max |x| = 3. Eval mode uses running values."""
    x = torch.tensor([[1.0], [3.0]])
    for name, scale in (("lp1", 2.0), ("lp2", math.sqrt(5.0)), ("lpinf", 3.0)):
        norm = NORMS[name].build(1, False, OmegaConf.merge(OmegaConf.structured(NormConfig), {"eps": 0.0,
                                                                                            "momentum": 1.0}))
        torch.testing.assert_close(norm.train()(x), torch.tensor([[-1.0], [1.0]]) / scale)
        torch.testing.assert_close(norm.eval()(torch.tensor([[2.0]])), torch.tensor([[0.0]]))  # running mean 2


def test_ics_matches_a_hand_computed_two_layer_example():
    """Two 1-unit linear layers: out = w2 * (w1 * x), loss = sum (out - y)^2."""
    net = model("mlp", "none", depth=2, width=1, activation="identity", bias=False, in_shape=(1,))
    net.head = torch.nn.Identity()
    w1, w2 = 0.7, -1.3
    with torch.no_grad():
        net.blocks[0].linear.weight.fill_(w1)
        net.blocks[1].linear.weight.fill_(w2)
    x, y = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([[0.5], [1.0], [2.0]])
    lr = 0.05
    xs, ys = x.flatten().double(), y.flatten().double()

    def grads(a, b):  # d/dw of sum (b a x - y)^2
        r = b * a * xs - ys
        return (2 * r * b * xs).sum().item(), (2 * r * a * xs).sum().item()

    g1, g2 = grads(w1, w2)
    g2_after = grads(w1 - lr * g1, w2)[1]  # only the layer below moves
    [row] = internal_covariate_shift(net, x, y, LOSSES["mse_sum"], lr, [1])
    assert row["l2"] == pytest.approx(abs(g2 - g2_after), rel=1e-5)
    assert row["cos"] == pytest.approx(math.copysign(1, g2 * g2_after), abs=1e-6)


@pytest.mark.parametrize("norm", ["batch", "noisy_batch"])
def test_probes_leave_model_and_rng_bit_for_bit_unchanged(norm):
    torch.manual_seed(0)
    net = model("mlp", norm, depth=3, activation="relu")
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net(x)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    ics = internal_covariate_shift(net, x, y, LOSSES["cross_entropy"], 0.1, [1, 2])
    land = landscape(net, x, y, LOSSES["cross_entropy"], 0.1, [0.5, 1, 2, 4], seed=3)
    one_step = relative_loss(net, x, y, LOSSES["cross_entropy"], [1e-3, 1.0])
    grad_norms = weight_grad_norms(net, x, y, LOSSES["cross_entropy"])
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())
    # and they are deterministic: same noise draw for every gradient on the same batch
    assert internal_covariate_shift(net, x, y, LOSSES["cross_entropy"], 0.1, [1, 2]) == ics
    assert landscape(net, x, y, LOSSES["cross_entropy"], 0.1, [0.5, 1, 2, 4], seed=3) == land
    assert relative_loss(net, x, y, LOSSES["cross_entropy"], [1e-3, 1.0]) == one_step
    assert weight_grad_norms(net, x, y, LOSSES["cross_entropy"]) == grad_norms


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_one_step_probes_match_autograd_and_first_order(norm):
    """Bjorck §3: the weight gradients' norms are autograd's, layer by layer; for a tiny step the relative loss
    is 1 - eta |g|^2 / L, the first-order change."""
    torch.manual_seed(0)
    net = model("mlp", norm, depth=4, width=32, activation="relu", init="kaiming")
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loss = F.cross_entropy(net(x), y)
    weights = [b.linear.weight for b in net.blocks] + [net.head.weight]
    want = [g.norm().item() for g in torch.autograd.grad(loss, weights)]
    assert weight_grad_norms(net, x, y, LOSSES["cross_entropy"]) == pytest.approx(want, rel=1e-6)
    g2 = sum(g.pow(2).sum() for g in torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters())))
    eta = 1e-4
    [ratio] = relative_loss(net, x, y, LOSSES["cross_entropy"], [eta])
    assert 1 - ratio == pytest.approx(eta * g2.item() / loss.item(), rel=0.02)  # ~5e-4; second order ~1%


def test_training_with_probes_is_the_training_without(data_root, tmp_path):
    base = ["norm=noisy_batch", "model.activation=relu", "trainer.moment_units=4"]
    train(make_cfg(data_root, tmp_path, base), str(tmp_path / "plain"))
    train(make_cfg(data_root, tmp_path, [*base, "trainer.ics_every=3", "trainer.ics_layers=[1,2]",
                                         "trainer.landscape_every=5"]), str(tmp_path / "probed"))
    keys = ("step", "test_loss", "test_acc", "train_loss", "train_acc", "dmean_L0", "dvar_L2")
    rows = [[{k: r.get(k) for k in keys} for r in read_jsonl(tmp_path / d / "metrics.jsonl")]
            for d in ("plain", "probed")]
    assert rows[0] == rows[1]
    kinds = {r["kind"] for r in read_jsonl(tmp_path / "probed" / "probes.jsonl")}
    assert kinds == {"ics", "landscape"}


@pytest.mark.parametrize("a", [0.1, 10.0])
def test_a_bn_network_is_invariant_to_its_weight_scale_and_the_gradient_scales_as_1_over_a(a):
    """Ioffe §3.3 on bnlab's BN MLP: scaling a hidden layer's weights by a leaves the output unchanged (BN follows
    the linear map, whose bias is dropped) and divides that layer's weight gradient by a."""
    torch.manual_seed(0)
    net = model("mlp", "batch", depth=3, width=16, activation="relu", init="kaiming").double()
    x, y = torch.rand(32, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (32,))
    w = net.blocks[1].linear.weight
    net.blocks[1].norm.eps = 1e-300  # the identity is exact only without the variance's epsilon

    def out_and_grad():
        net.zero_grad()
        out = net(x)
        F.cross_entropy(out, y).backward()
        return out.detach(), w.grad.clone()

    out1, g1 = out_and_grad()
    with torch.no_grad():
        w.mul_(a)
    out_a, g_a = out_and_grad()
    torch.testing.assert_close(out_a, out1)
    torch.testing.assert_close(g_a, g1 / a)


def test_santurkar_theorem_4_1_holds_in_a_bn_network():
    """Thm 4.1 at a BN layer of bnlab's MLP, with its gamma fixed: for each unit j,
    ||dL/dy_j||^2 <= (gamma_j^2 / sigma_j^2) (||dL/dz_j||^2 - <1, dL/dz_j>^2 / m - <dL/dz_j, y_hat_j>^2 / m),
    y = the linear map's output, z = the BN output, sigma_j the batch std of y_j (a check, in float64)."""
    torch.manual_seed(0)
    net = model("mlp", "batch", depth=3, width=16, activation="relu", init="kaiming").double()
    bn = net.blocks[1].norm
    with torch.no_grad():
        bn.weight.uniform_(0.2, 3.0)
    seen = {}
    net.blocks[1].linear.register_forward_hook(lambda m, i, out: seen.update(y=out) or out.retain_grad())
    bn.register_forward_hook(lambda m, i, out: seen.update(z=out) or out.retain_grad())
    x, target = torch.rand(64, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (64,))
    F.cross_entropy(net(x), target).backward()
    y, dy, dz = seen["y"].detach(), seen["y"].grad, seen["z"].grad
    m = len(y)
    sigma2 = y.var(0, unbiased=False) + bn.eps
    y_hat = (y - y.mean(0)) / sigma2.sqrt()
    bound = bn.weight.detach() ** 2 / sigma2 * ((dz**2).sum(0) - dz.sum(0) ** 2 / m - (dz * y_hat).sum(0) ** 2 / m)
    assert ((dy**2).sum(0) <= bound * (1 + 1e-9)).all()
    assert ((dy**2).sum(0) >= 0.5 * bound).any()  # and it is not vacuous: some unit comes close to it


def test_depth_profile_doubles_with_each_identity_branch_of_a_residual_mlp():
    """Bjorck §3's measurement on a known case: with every later layer's weight the identity (linear units, no
    normaliser), h_l = 2^l h_0, so the activations' std doubles per layer and dL/dh halves on the way up."""
    net = model("mlp", "none", depth=5, width=10, activation="identity", residual=True, bias=False)
    with torch.no_grad():
        for b in net.blocks[1:]:
            b.linear.weight.copy_(torch.eye(10))
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    rows = depth_profile(net, x, y, LOSSES["cross_entropy"])
    stds, grads = [r["std"] for r in rows], [r["grad_norm"] for r in rows]
    for layer in range(1, 5):
        assert stds[layer] / stds[layer - 1] == pytest.approx(2.0, rel=1e-5)
        assert grads[layer - 1] / grads[layer] == pytest.approx(2.0, rel=1e-5)
