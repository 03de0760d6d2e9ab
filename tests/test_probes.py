import numpy as np
import torch
import torch.nn.functional as F

from bnlab.probes import activation_stats, jacobian_spectra, layer_values
from tests.test_models import model


def pre_activations(net, x):
    """The input of every hidden nonlinearity on batch x, in training mode (batch statistics), as units x values:
    what the probes read."""
    return [v["x"] for v in layer_values(net, x)]


def manual_pre_activations(net, x):
    """The sigmoid inputs computed by hand: linear map, then batch statistics of this very batch."""
    h, out = x.flatten(1), []
    for block in net.blocks:
        z = block.linear(h)
        a = F.batch_norm(z, None, None, block.norm.weight, block.norm.bias, training=True, eps=block.norm.eps)
        out.append(a.detach().numpy())
        h = torch.sigmoid(a)
    return out


def test_logged_percentiles_and_histogram_match_numpy():
    torch.manual_seed(0)
    net = model("mlp", "batch", init_std=0.5)
    with torch.no_grad():
        for b in net.blocks:
            b.norm.weight.uniform_(0.5, 2.0)
            b.norm.bias.uniform_(-1, 1)
    x = torch.rand(200, 1, 28, 28)
    rows = activation_stats(net, x, units=3, bins=24, hist_range=3.0)
    for row, a in zip(rows, manual_pre_activations(net, x), strict=True):
        flat = a.ravel()
        np.testing.assert_allclose([row["p15"], row["p50"], row["p85"]], np.percentile(flat, [15, 50, 85]),
                                   rtol=1e-5, atol=1e-5)
        for u in range(3):
            np.testing.assert_allclose([row[f"u{u}_p{p}"] for p in (15, 50, 85)],
                                       np.percentile(a[:, u], [15, 50, 85]), rtol=1e-5, atol=1e-5)
        counts, _ = np.histogram(flat, bins=24, range=(-3.0, 3.0))
        assert np.abs(np.array(row["hist"]) - counts).sum() <= 2  # float32 vs float64 at bin edges
        assert row["below"] == (flat < -3).sum() and row["above"] == (flat > 3).sum()
        np.testing.assert_allclose([row["mean"], row["std"]], [flat.mean(), flat.std(ddof=1)], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([row[f"u{u}_{k}"] for u in range(3) for k in ("mean", "std")],
                                   [f(a[:, u]) for u in range(3) for f in (np.mean, lambda v: v.std(ddof=1))],
                                   rtol=1e-4, atol=1e-5)


def test_conv_units_are_channels_over_batch_and_positions():
    torch.manual_seed(0)
    net = model("cnn", "none")
    x = torch.rand(8, 3, 32, 32)
    acts = pre_activations(net, x)
    first = net.blocks[0].linear(x).detach()  # N, C, H, W
    assert acts[0].shape == (16, 8 * 32 * 32)
    torch.testing.assert_close(acts[0][5], first[:, 5].flatten())


def test_probe_leaves_bn_statistics_and_rng_untouched():
    torch.manual_seed(0)
    net = model("mlp", "batch")
    net(torch.rand(60, 1, 28, 28))  # some running statistics to protect
    x = torch.rand(100, 1, 28, 28)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    net.eval()
    activation_stats(net, x, units=3, bins=10, hist_range=5.0)
    assert not net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


def test_jacobian_spectra_are_the_singular_values_of_one_examples_layer_to_layer_map():
    """Against the Jacobian autograd takes of the block's own modules, in eval mode with the running statistics
    set to the probe batch's (so the normaliser is the map a training step applies to that example)."""
    torch.manual_seed(0)
    for norm in ("none", "batch"):
        net = model("mlp", norm, depth=3, width=12, activation="sigmoid", init_std=0.5).double()
        if norm == "batch":
            with torch.no_grad():
                for b in net.blocks:
                    b.norm.weight.uniform_(-2.0, 2.0)  # a negative gamma flips a unit: |slope| counts
        x = torch.rand(40, 1, 28, 28, dtype=torch.float64)
        inputs = pre_activations(net, x)  # units x examples, batch statistics
        rows = jacobian_spectra(net, x, examples=5)
        assert [r["layer"] for r in rows] == [1, 2]
        for r in rows:
            block, below = net.blocks[r["layer"]], net.blocks[r["layer"] - 1]
            if norm == "batch":
                z = block.linear(torch.sigmoid(inputs[r["layer"] - 1].T)).detach()
                block.norm.running_mean.copy_(z.mean(0))
                block.norm.running_var.copy_(z.var(0, unbiased=False))
            block.eval()
            sv = torch.stack([torch.linalg.svdvals(torch.autograd.functional.jacobian(
                lambda v, block=block, below=below: block.norm(block.linear(below.act(v))[None])[0],
                inputs[r["layer"] - 1][:, i]))
                for i in range(5)])
            block.train()
            mid = lambda t: torch.quantile(t, 0.5, dim=-1)  # noqa: E731  (the middle of an even count: the mean of two)
            np.testing.assert_allclose([r["jac_sv_median"], r["jac_sv_max"], r["jac_sv_min"]],
                                       [mid(mid(sv)), mid(sv[:, 0]), mid(sv[:, -1])],
                                       rtol=1e-6)


def test_jacobian_spectra_of_a_hand_made_linear_layer():
    """Identity nonlinearity, no normaliser: each example's Jacobian is W itself, singular values 3 and 0.5."""
    net = model("mlp", "none", depth=2, width=2, activation="identity")
    with torch.no_grad():
        net.blocks[1].linear.weight.copy_(torch.tensor([[0.0, 3.0], [0.5, 0.0]]))
    (row,) = jacobian_spectra(net, torch.rand(8, 1, 28, 28), examples=4)
    assert (row["jac_sv_max"], row["jac_sv_min"]) == (3.0, 0.5)
    assert row["jac_sv_median"] == 1.75  # the middle of two
