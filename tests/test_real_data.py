"""Opt-in: the real MNIST and CIFAR-10 (set BNLAB_DATA; the Makefile does when ../shared/data exists)."""

import os
import warnings

import pytest
import torch

from bnlab.data import load_dataset

ROOT = os.environ.get("BNLAB_DATA")
pytestmark = [pytest.mark.data, pytest.mark.skipif(not ROOT, reason="BNLAB_DATA not set")]


def test_real_mnist():
    d = load_dataset("mnist", ROOT, download=False)
    assert d.train.x.shape == (60000, 1, 28, 28) and d.test.x.shape == (10000, 1, 28, 28)
    assert d.train.y[:5].tolist() == [5, 0, 4, 1, 9] and d.test.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(d.train.y).tolist()[:2] == [5923, 6742]
    assert abs(d.train.x.mean().item() - 0.1307) < 1e-4


def test_real_cifar10():
    verify = os.environ.get("BNLAB_DATA_VERIFY", "true").lower() != "false"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_dataset("cifar10", ROOT, download=False, verify=verify, preprocess="unit")
    assert d.train.x.shape == (50000, 3, 32, 32) and d.test.x.shape == (10000, 3, 32, 32)
    assert d.train.y[:5].tolist() == [6, 9, 9, 4, 1] and d.test.y[:5].tolist() == [3, 8, 8, 0, 6]
    assert torch.bincount(d.train.y).tolist() == [5000] * 10
    torch.testing.assert_close(d.train.x.mean(dim=(0, 2, 3)), torch.tensor([0.49139968, 0.48215827, 0.44653124]),
                               atol=1e-5, rtol=0)
