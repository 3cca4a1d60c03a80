"""Dataset loading from files in the real on-disk formats, written small in tmp_path."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from scaletui.core.datasets import MNIST1D_TEST, MNIST1D_TRAIN, DatasetUnavailable
from scaletui.core.specs import DataSpec
from scaletui.engine import data as engine_data
from scaletui.engine import dataset_files
from scaletui.engine.data import (
    UnsafePickle,
    add_label_noise,
    load_dataset,
    resolve_device,
    subset_indices,
)
from scaletui.engine.dataset_files import prepare_dataset

CPU = torch.device("cpu")

# --------------------------------------------------------------------------- writers of the real formats


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's idx format: big-endian int32 header (magic 2051 images / 2049 labels, sizes), then uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, rows, cols) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def make_idx_dataset(root: Path, folder: str, n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    write_idx(root / folder / "raw", "train", arrays["x"], arrays["y"])
    write_idx(root / folder / "raw", "t10k", arrays["x_test"], arrays["y_test"])
    return arrays


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes the way Python 2's cPickle wrote `str` (SHORT_BINSTRING / BINSTRING), as in the
    real CIFAR-10 batches; Python 3's protocol 2 would instead call _codecs.encode."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    batch = {
        b"batch_label": b"testing batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(batch)


def make_cifar(root: Path, per_batch: int = 8, n_test: int = 10) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        write_cifar_batch(folder / f"data_batch_{i}", x, y)
        xs.append(x)
        ys += y
    x_test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test).tolist()
    write_cifar_batch(folder / "test_batch", x_test, y_test)
    return {"x": np.concatenate(xs), "y": np.array(ys), "x_test": x_test, "y_test": np.array(y_test)}


# --------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_is_stored_without_pickle(mnist1d_dir: Path) -> None:
    with np.load(mnist1d_dir / "mnist1d" / "mnist1d.npz", allow_pickle=False) as z:
        assert z["x"].shape == (MNIST1D_TRAIN, 40) and z["x"].dtype == np.float32
        assert z["x_test"].shape == (MNIST1D_TEST, 40)
        assert z["y"].dtype == np.int64 and set(np.unique(z["y"])) == set(range(10))
    assert not list((mnist1d_dir / "mnist1d").glob("*.tmp")), "temporary file left behind"


def test_mnist1d_standard_normalisation_per_feature(mnist1d_dir: Path) -> None:
    d = load_dataset(DataSpec(dataset="mnist1d", train_size=2000), mnist1d_dir, seed=0, device=CPU)
    assert d.x_train.shape == (2000, 40) and d.x_train.dtype == torch.float32
    assert d.x_test.shape == (MNIST1D_TEST, 40) and d.y_test.dtype == torch.int64
    assert d.input_shape == (40,) and d.num_classes == 10
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(d.x_train.std(0, correction=0), torch.ones(40), atol=1e-4, rtol=0)
    # The test split uses the training statistics, so it is only roughly standardised.
    assert d.x_test.mean(0).abs().max() < 0.2


def test_subsets_are_nested_and_independent_of_the_run_seed(mnist1d_dir: Path) -> None:
    small = load_dataset(DataSpec(train_size=100, normalize="none"), mnist1d_dir, seed=0, device=CPU)
    large = load_dataset(DataSpec(train_size=300, normalize="none"), mnist1d_dir, seed=7, device=CPU)
    torch.testing.assert_close(large.x_train[:100], small.x_train)
    torch.testing.assert_close(large.y_train[:100], small.y_train)
    full = load_dataset(DataSpec(normalize="none"), mnist1d_dir, seed=0, device=CPU)
    assert len(full.y_train) == MNIST1D_TRAIN
    torch.testing.assert_close(full.x_train[:300], large.x_train)


def test_label_noise_changes_exactly_the_fraction_to_other_classes(mnist1d_dir: Path) -> None:
    clean = load_dataset(DataSpec(train_size=1000), mnist1d_dir, seed=3, device=CPU)
    noisy = load_dataset(DataSpec(train_size=1000, label_noise=0.25), mnist1d_dir, seed=3, device=CPU)
    again = load_dataset(DataSpec(train_size=1000, label_noise=0.25), mnist1d_dir, seed=3, device=CPU)
    other = load_dataset(DataSpec(train_size=1000, label_noise=0.25), mnist1d_dir, seed=4, device=CPU)
    changed = noisy.y_train != clean.y_train
    assert int(changed.sum()) == 250  # every picked label moves to a *different* class
    assert torch.equal(noisy.y_train, again.y_train)
    assert not torch.equal(noisy.y_train, other.y_train)
    assert torch.equal(noisy.y_test, clean.y_test)  # the test split is never noised
    assert noisy.y_train.min() >= 0 and noisy.y_train.max() < 10


def test_add_label_noise_edge_cases() -> None:
    y = torch.arange(10) % 3
    assert torch.equal(add_label_noise(y, 0.0, 3, seed=0), y)
    assert bool((add_label_noise(y, 1.0, 3, seed=0) != y).all())
    with pytest.raises(ValueError):
        add_label_noise(y, 1.5, 3, seed=0)


def test_subset_indices_bounds() -> None:
    assert torch.equal(subset_indices(50, None).sort().values, torch.arange(50))
    with pytest.raises(ValueError, match="train_size"):
        subset_indices(50, 51)


def test_raw_arrays_are_read_once_per_process(mnist1d_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_data, "_RAW_CACHE", {})
    calls: list[str] = []
    real = engine_data._read_raw
    monkeypatch.setattr(engine_data, "_read_raw", lambda name, d: calls.append(name) or real(name, d))
    for seed in range(3):
        load_dataset(DataSpec(train_size=64), mnist1d_dir, seed=seed, device=CPU)
    assert calls == ["mnist1d"]


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_load(tmp_path: Path, name: str, folder: str) -> None:
    arrays = make_idx_dataset(tmp_path, folder)
    raw = load_dataset(DataSpec(dataset=name, normalize="none"), tmp_path, seed=0, device=CPU)
    assert raw.x_train.shape == (30, 1, 28, 28) and raw.x_test.shape == (12, 1, 28, 28)
    assert raw.input_shape == (1, 28, 28)
    assert float(raw.x_train.min()) >= 0.0 and float(raw.x_train.max()) <= 1.0
    # Same examples as written, in the fixed subset order.
    idx = subset_indices(30, None).numpy()
    np.testing.assert_allclose(raw.x_train[:, 0].numpy(), arrays["x"][idx] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(raw.y_train.numpy(), arrays["y"][idx])
    np.testing.assert_array_equal(raw.y_test.numpy(), arrays["y_test"])

    std = load_dataset(DataSpec(dataset=name, train_size=20), tmp_path, seed=0, device=CPU)
    assert std.x_train.shape == (20, 1, 28, 28)
    assert abs(float(std.x_train.mean())) < 1e-5
    assert abs(float(std.x_train.std(correction=0)) - 1.0) < 1e-4


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_missing_idx_files_name_the_folder(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(DataSpec(dataset=name), tmp_path, seed=0, device=CPU)
    message = str(err.value)
    assert str(tmp_path / folder / "raw") in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message
    assert err.value.folder == tmp_path / folder / "raw"


def test_failed_download_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, data_dir: Path) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dataset_files, "_download", offline)
    with pytest.raises(DatasetUnavailable, match="download failed: OSError"):
        prepare_dataset(DataSpec(dataset="mnist", download=True), tmp_path)
    with pytest.raises(DatasetUnavailable, match="cifar-10-batches-py"):
        prepare_dataset(DataSpec(dataset="cifar10", download=True), tmp_path)


def test_idx_file_with_wrong_magic_is_rejected(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">ii", 2051, 30) + bytes(30))  # image magic on a label file
    with pytest.raises(ValueError, match="not valid idx files"):
        load_dataset(DataSpec(dataset="mnist"), tmp_path, seed=0, device=CPU)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_batches_load(tmp_path: Path) -> None:
    arrays = make_cifar(tmp_path)
    d = load_dataset(DataSpec(dataset="cifar10", normalize="none"), tmp_path, seed=0, device=CPU)
    assert d.x_train.shape == (40, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    idx = subset_indices(40, None).numpy()
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    expected = arrays["x"][idx].reshape(-1, 3, 32, 32) / 255.0
    np.testing.assert_allclose(d.x_train.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train.numpy(), arrays["y"][idx])
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["y_test"])

    std = load_dataset(DataSpec(dataset="cifar10"), tmp_path, seed=0, device=CPU)
    per_channel_mean = std.x_train.mean(dim=(0, 2, 3))
    per_channel_std = std.x_train.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(per_channel_mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel_std, torch.ones(3), atol=1e-4, rtol=0)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        Py2Pickler(f, protocol=2).dump({b"data": _Evil(marker), b"labels": [0]})
    with pytest.raises(UnsafePickle, match="system"):
        load_dataset(DataSpec(dataset="cifar10"), tmp_path, seed=0, device=CPU)
    assert not marker.exists()


def test_python3_codecs_pickle_is_refused(tmp_path: Path) -> None:
    """Only numpy's array globals are allowed, not even the harmless-looking _codecs.encode."""
    make_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UnsafePickle, match="_codecs"):
        load_dataset(DataSpec(dataset="cifar10"), tmp_path, seed=0, device=CPU)


def test_missing_cifar_batch_names_the_folder(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(DataSpec(dataset="cifar10"), tmp_path, seed=0, device=CPU)
    assert "test_batch" in str(err.value) and str(tmp_path / "cifar-10-batches-py") in str(err.value)


def test_unknown_dataset_and_devices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare_dataset(DataSpec(dataset="imagenet"), tmp_path)
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
