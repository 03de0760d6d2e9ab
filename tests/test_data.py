import warnings

import numpy as np
import pytest
import torch

from bnlab.data import DataError, load_dataset
from bnlab.train import ConfigError
from tests.conftest import learnable_images, make_cfg, run_cli, write_cifar, write_mnist


def test_mnist_fixture_through_torchvision(data_root):
    d = load_dataset("mnist", str(data_root), download=False)
    x, y = learnable_images(600, (28, 28), 0)
    assert d.train.x.shape == (600, 1, 28, 28) and d.test.x.shape == (200, 1, 28, 28)
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    np.testing.assert_array_equal(d.train.x[:, 0].numpy() * 255, x.astype(np.float32))  # unit scaling
    np.testing.assert_array_equal(d.train.y.numpy(), y)


def test_cifar_fixture_through_torchvision(data_root):
    with pytest.warns(UserWarning, match="without torchvision's md5 check"):
        d = load_dataset("cifar10", str(data_root), download=False, verify=False, preprocess="unit")
    x, y = learnable_images(40, (3, 32, 32), 0)  # data_batch_1, stored as R, G, B planes
    assert d.train.x.shape == (200, 3, 32, 32) and d.test.x.shape == (40, 3, 32, 32)
    np.testing.assert_allclose(d.train.x[:40].numpy() * 255, x.astype(np.float32), atol=1e-4)
    np.testing.assert_array_equal(d.train.y[:40].numpy(), y)


def test_cifar_checksum_mismatch_says_how_to_opt_out(data_root):
    with pytest.raises(DataError, match="data.verify=false"):
        load_dataset("cifar10", str(data_root), download=False, verify=True)


def test_data_check_finds_the_fixture_or_names_the_checksum_fix(data_root):
    """`python -m bnlab.data`, what `make reproduce` asks first, at the root a run would use (BNLAB_DATA)."""
    env = {"BNLAB_DATA": str(data_root), "BNLAB_DATA_VERIFY": "false"}
    ok = run_cli(["bnlab.data"], env_extra=env)
    assert ok.returncode == 0 and f"mnist, cifar10 found under {data_root}" in ok.stdout
    bad = run_cli(["bnlab.data", "cifar10"], env_extra={**env, "BNLAB_DATA_VERIFY": "true"})  # fixture md5s differ
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "does not match torchvision's checksums" in bad.stderr and "BNLAB_DATA_VERIFY=false" in bad.stderr


def test_standardize_uses_training_statistics(data_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_dataset("cifar10", str(data_root), download=False, verify=False, preprocess="standardize")
    mean = d.train.x.mean(dim=(0, 2, 3))
    std = d.train.x.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-5, rtol=0)


def test_missing_offline_names_root_files_and_fix(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "empty"), download=False)
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "train-images-idx3-ubyte" in msg
    assert "BNLAB_DATA" in msg and "data.root=" in msg


def test_truncated_mnist_is_an_error_not_a_half_dataset(tmp_path):
    write_mnist(tmp_path)
    f = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_truncated_cifar_pickle_is_an_error(tmp_path):
    write_cifar(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset("cifar10", str(tmp_path), download=False, verify=False)


def test_mismatched_label_count_is_an_error(tmp_path):
    write_mnist(tmp_path)
    from tests.conftest import write_idx

    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(150, np.uint8))
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_identity_teacher_keeps_the_inputs_and_targets_them():
    linear = load_dataset("gaussian_linear", "", n_samples=64, dim=3)
    identity = load_dataset("gaussian_identity", "", n_samples=64, dim=3)
    assert torch.equal(identity.train.x, linear.train.x)  # the chain's first-order check sees the same inputs
    assert torch.equal(identity.train.y, identity.train.x) and not torch.equal(linear.train.y, linear.train.x)


def test_non_iid_batches_hold_the_declared_classes_and_every_example_once_an_epoch():
    from bnlab.data import BatchOrder

    labels = torch.arange(10).repeat_interleave(40)  # 10 classes x 40 examples
    order = BatchOrder(len(labels), 20, seed=3, labels=labels, classes=2)
    batches = [order.next() for _ in range(len(labels) // 20)]  # one epoch: 4 runs of 10 per class, 40 runs
    for b in batches:
        counts = torch.bincount(labels[b], minlength=10)
        assert sorted(counts[counts > 0].tolist()) in ([10, 10], [20])  # two runs of 10 (rarely one class twice)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(labels)))
    iid = BatchOrder(len(labels), 20, seed=3)
    assert torch.equal(iid.next(), torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))[:20])
    with pytest.raises(ConfigError, match="must divide"):
        BatchOrder(len(labels), 20, seed=3, labels=labels, classes=3)


def test_train_size_trains_on_the_first_examples(data_root, tmp_path):
    from bnlab.data import load

    full, small = (load(make_cfg(data_root, tmp_path, o).data) for o in ([], ["data.train_size=100"]))
    assert torch.equal(small.train.x, full.train.x[:100]) and torch.equal(small.test.x, full.test.x)
    # the process-wide cache of the whole dataset is left whole for the next run that loads it
    assert len(load(make_cfg(data_root, tmp_path).data).train.x) == len(full.train.x) > 100
