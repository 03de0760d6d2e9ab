import torch
from omegaconf import OmegaConf
from torch import nn

from bnlab.config import ModelConfig, NormConfig
from bnlab.models import Block, build_model


def model(arch="mlp", norm="batch", in_shape=None, **kw):
    m = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"arch": arch, **kw})
    n = OmegaConf.merge(OmegaConf.structured(NormConfig), {"name": norm})
    shape = in_shape or ((1, 28, 28) if arch == "mlp" else (3, 32, 32))
    return build_model(m, n, shape, 10)


def test_bn_sits_between_linear_map_and_nonlinearity_and_drops_the_bias():
    for arch, bn_cls in (("mlp", nn.BatchNorm1d), ("cnn", nn.BatchNorm2d)):
        net = model(arch, "batch")
        for block in net.blocks:
            assert isinstance(block.norm, bn_cls)
            assert block.linear.bias is None  # beta subsumes it (Ioffe §3.2)
            assert isinstance(block.act, nn.Sigmoid)  # the schema default activation
        assert net.head.bias is not None  # the output layer is not normalised and keeps its bias
        plain = model(arch, "none")
        assert all(b.linear.bias is not None and isinstance(b.norm, nn.Identity) for b in plain.blocks)


def test_norm_on_the_last_layers_only_leaves_the_layers_below_plain():
    n = OmegaConf.merge(OmegaConf.structured(NormConfig), {"name": "batch", "last_layers": 2})
    net = build_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"depth": 6}), n, (1, 28, 28), 10)
    assert [isinstance(b.norm, nn.BatchNorm1d) for b in net.blocks] == [False] * 4 + [True] * 2
    assert [b.linear.bias is None for b in net.blocks] == [False] * 4 + [True] * 2  # beta takes the bias' role


def test_a_residual_mlp_adds_each_hidden_layers_input_after_the_first():
    """Identity nonlinearity and no normaliser: layer 1 maps x to W1 x, each later layer h to h + W h."""
    torch.manual_seed(0)
    net = model("mlp", "none", depth=3, width=4, activation="identity", residual=True, bias=False)
    x = torch.rand(5, 1, 28, 28)
    w = [b.linear.weight.detach() for b in net.blocks]
    h = x.flatten(1) @ w[0].T
    for wi in w[1:]:
        h = h + h @ wi.T
    torch.testing.assert_close(net(x), h @ net.head.weight.detach().T)


def test_bn_output_is_standardised_per_unit_in_training_mode():
    torch.manual_seed(0)
    net = model("mlp", "batch").train()
    x = torch.rand(256, 1, 28, 28) * 3 + 1
    out = {}
    net.blocks[1].norm.register_forward_hook(lambda m, i, o: out.update(y=o))
    net(x)
    y = out["y"]  # gamma = 1, beta = 0 at initialisation
    torch.testing.assert_close(y.mean(0), torch.zeros(100), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(100), atol=1e-3, rtol=0)


def test_eval_mode_uses_running_statistics_with_unbiased_variance():
    torch.manual_seed(0)
    bn = model("mlp", "batch").blocks[0].norm
    bn.momentum = 1.0  # running statistics := the last batch's
    x = torch.randn(60, 100) * 2 + 3
    train_out = bn.train()(x)
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    torch.testing.assert_close(bn.running_var, x.var(0, unbiased=True))  # Ioffe Alg. 2: m/(m-1)
    eval_out = bn.eval()(x)
    # The same batch gives slightly different outputs: eval divides by the unbiased std.
    scale = ((x.var(0, unbiased=False) + bn.eps) / (x.var(0, unbiased=True) + bn.eps)).sqrt()
    torch.testing.assert_close(eval_out, train_out * scale, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eval_out, train_out)


def test_normal_init_has_the_configured_std():
    torch.manual_seed(0)
    w = model("mlp", "none", init="normal", init_std=0.1).blocks[0].linear.weight
    assert abs(w.std().item() - 0.1) < 0.002 and abs(w.mean().item()) < 0.002


def _pooled_after(net, x):  # the textbook order: conv -> norm -> nonlinearity -> pool
    for b in net.blocks:
        x = b.pool(b.drop(b.act(b.norm(b.linear(x)))))
    return net.head(x.flatten(1))


def test_cnn_pools_before_its_nonlinearity_with_the_outputs_of_pooling_after():
    x, y = torch.randn(16, 3, 32, 32) * 3, torch.randint(0, 10, (16,))
    for activation in ("sigmoid", "relu", "tanh"):
        for norm in ("none", "batch"):
            torch.manual_seed(0)
            net = model("cnn", norm, activation=activation)
            results = []
            for forward in (_pooled_after, lambda net, x: net(x)):
                state = {k: v.clone() for k, v in net.state_dict().items()}  # BN's running statistics move
                net.zero_grad()
                out = forward(net, x)
                nn.functional.cross_entropy(out, y).backward()
                results.append([out.detach()] + [p.grad.clone() for p in net.parameters()])
                net.load_state_dict(state)
            (out_after, *grads_after), (out_first, *grads_first) = results
            assert torch.equal(out_after, out_first), (activation, norm)
            if activation == "relu":  # its tied outputs are tied inputs, or zeros whose gradient is zero either way
                assert all(torch.equal(a, b) for a, b in zip(grads_after, grads_first, strict=True)), norm


def test_pooling_first_routes_a_saturated_tie_to_the_larger_pre_activation():
    block = Block(nn.Identity(), nn.Identity(), nn.Sigmoid(), 0.0, pool=True, norm_name="none")
    z = torch.tensor([[[[9.0, 9.000001], [-1.0, -2.0]]]])  # sigmoid rounds the first two to the same float
    assert torch.sigmoid(z[0, 0, 0, 0]) == torch.sigmoid(z[0, 0, 0, 1])
    grads = []
    for forward in (lambda z: block.pool(block.act(z)), block):
        zz = z.clone().requires_grad_()
        forward(zz).sum().backward()
        grads.append(zz.grad[0, 0, 0])
    after, first = grads
    assert after[0] > 0 and after[1] == 0  # pooling after: the first of the tied outputs
    assert first[0] == 0 and first[1] > 0  # pooling first: the larger pre-activation, as d/dz of the exact max
