"""Santurkar et al. 2018 §4 (T1-T5, experiments/santurkar_theory.py) against hand-computed answers, an independent
finite difference, and cases outside a statement's assumptions where the check must fail."""

import math

import pytest
import torch

from bnlab.experiments.santurkar_theory import BNLayer, block_quad_forms, lemma_4_5, obs_4_3, thm_4_1, thm_4_2, thm_4_4
from tests.test_models import model

A = math.sqrt(1.5)  # y = (0, 1, 2): mu = 1, sigma^2 = 2/3, y_hat = (-A, 0, A)


def one_unit(h: torch.Tensor) -> BNLayer:
    """One unit, m = 3, y = (0, 1, 2) (x = identity column), gamma = 1, beta = 0, L(z) = 1/2 sum h (z - t)^2 with
    t = (0, 0, 1). The only direction BN's projection keeps is (1, -2, 1) / sqrt(6)."""
    t = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    return BNLayer(torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                   torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                   lambda z: 0.5 * (h * (z - t) ** 2).sum())


def test_thm_4_1_by_hand_and_the_printed_constant_fails():
    """g = y_hat - t = (-A, 0, A - 1); grad_y L_hat = (1/sigma) P g = -(1/6)(1, -2, 1) / sigma: squared norm
    (1/6) / (2/3) = 1/4, which the 1/m bound equals. The printed 1/sqrt(m) subtracts (3 - A)^2 / sqrt(3) instead of
    (3 - A)^2 / 3 and goes negative: that statement fails here."""
    lhs, rhs, printed = thm_4_1(one_unit(torch.ones(3, 1, dtype=torch.float64)))
    assert lhs.item() == pytest.approx(0.25, rel=1e-12)
    assert rhs.item() == pytest.approx(0.25, rel=1e-12)
    assert printed.item() == pytest.approx(1.5 * (11 / 3 - 2 * A - (3 - A) ** 2 / math.sqrt(3)), rel=1e-12)
    assert printed.item() < 0 < lhs.item()


def test_thm_4_2_by_hand():
    """H = I: v^T H v = ||v||^2 = 1/4, <g, y_hat> = 3 - A, so (1/sigma^2)/4 - (3 - A)/(3 sigma^2)/4 = A/8: both
    the double-backward lhs and the first form's rhs."""
    t2 = thm_4_2(one_unit(torch.ones(3, 1, dtype=torch.float64)))
    assert t2["lhs"].item() == pytest.approx(A / 8, rel=1e-12)
    assert t2["rhs"].item() == pytest.approx(A / 8, rel=1e-12)
    assert abs(t2["excess"].item()) < 1e-14


def test_thm_4_2_second_form_fails_without_its_assumption():
    """H = diag(e, 1, e), e = 0.01: g = (-eA, 0, e(A - 1)) is nearly outside H's large direction, while v, along
    (1, -2, 1), is inside it: v^T H v > g^T H g, and the second form's bound falls below the lhs."""
    e = 0.01
    t2 = thm_4_2(one_unit(torch.tensor([[e], [1.0], [e]], dtype=torch.float64)))
    assert not t2["assumption"].item()
    assert t2["lhs"].item() > t2["second"].item()
    assert abs(t2["excess"].item()) < 1e-12  # the first, unconditional form still holds


def test_quadratic_forms_and_theorems_in_a_bn_network():
    """bnlab's 1-hidden-layer BN MLP (tanh, random gamma and beta): the double-backward quadratic form equals a
    central second difference of L_hat along unit j's gradient; Thm 4.1 and 4.2 hold with equality."""
    torch.manual_seed(0)
    net = model("mlp", "batch", depth=1, width=6, activation="tanh", in_shape=(5,)).double()
    with torch.no_grad():
        net.blocks[0].norm.weight.uniform_(0.3, 2.0)
        net.blocks[0].norm.bias.uniform_(-1.0, 1.0)
    x, target = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 10, (32,))
    bn = net.blocks[0].norm
    layer = BNLayer(x, net.blocks[0].linear.weight, bn.weight, bn.bias,
                    lambda z: torch.nn.functional.cross_entropy(net.head(net.blocks[0].act(z)), target))
    y = layer.y()
    v = torch.func.grad(layer.loss_hat)(y)
    forms = block_quad_forms(layer.loss_hat, y, v)
    h = 1e-4  # along the unit vector: rounding ~ 1e-16 L / h^2 ~ 1e-8, truncation ~ h^2 ~ 1e-8
    for j in range(y.shape[1]):
        d = torch.zeros_like(v)
        d[:, j] = v[:, j] / v[:, j].norm()
        second = (layer.loss_hat(y + h * d) - 2 * layer.loss_hat(y) + layer.loss_hat(y - h * d)) / h**2
        assert (forms[j] / v[:, j].norm() ** 2).item() == pytest.approx(second.item(), rel=1e-5, abs=1e-7)
    lhs, rhs, _ = thm_4_1(layer)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)
    assert thm_4_2(layer)["excess"].abs().max() < 1e-10


def test_thm_4_4_is_tight_for_a_scaled_orthogonal_batch():
    """X = lambda Q, Q orthogonal (m = d): X X^T = lambda^2 I, so ||X^T u||^2 = lambda^2 ||u||^2 and the actual
    weight gradient attains the minimax bound; a generic X stays below it."""
    torch.manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    w, t = torch.randn(3, 8, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    top = lambda z: ((torch.tanh(z) - t) ** 2).sum()  # noqa: E731
    gamma, beta = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    lhs, bound = thm_4_4(BNLayer(2.5 * q, w, gamma, beta, top))
    torch.testing.assert_close(lhs, bound, rtol=1e-10, atol=0)
    lhs, bound = thm_4_4(BNLayer(torch.randn(8, 8, dtype=torch.float64), w, gamma, beta, top))
    assert (lhs < 0.99 * bound).all()


def test_obs_4_3_reproduces_activations_and_fails_on_a_constant_unit():
    y = torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 0.5]], dtype=torch.float64)
    assert obs_4_3(y) < 1e-15
    assert not obs_4_3(torch.tensor([[1.0], [1.0]], dtype=torch.float64)) <= 1e-12  # sigma = 0: no such BN


def test_lemma_4_5_by_hand():
    """W_0 = (1, 0), W* = (1, 1): c* = 1/2, W_hat = (1/2, 1/2), ||W_0 - W_hat||^2 = 1/2 = 1 - (2 - 1)^2 / 2. Fails
    (inf) when the BN network at W_hat misses the standard loss (gamma, beta not Obs 4.3's); not applicable (NaN)
    when <W_0, W*> <= 0."""
    w0, w_star = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    got = lemma_4_5(w0, w_star, 0.3, lambda w: 0.3, 1e-9)
    assert (got["lhs"], got["rhs"], got["plain"], got["value"]) == pytest.approx((0.5, 0.5, 1.0, 1.0))
    assert math.isinf(lemma_4_5(w0, w_star, 0.3, lambda w: 0.31, 1e-9)["value"])
    assert math.isnan(lemma_4_5(-w0, w_star, 0.3, lambda w: 0.3, 1e-9)["value"])
