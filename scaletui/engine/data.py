"""Datasets as whole tensors on the training device.

Scaling-law runs are small and many, so every dataset here fits in memory:
loading it once into tensors on the device and indexing batches out of them is
both faster than a DataLoader and trivially reproducible (the batch order is
one seeded permutation per epoch, see loop.py).

Three rules shape this module:
- Nothing is unpickled except through a restricted unpickler (CIFAR-10's
  python batches), and MNIST-1D is stored as `.npz` loaded with
  `allow_pickle=False`: a dataset folder must never be a way to run code.
- A training subset is a prefix of one fixed permutation (seed 0, independent
  of the run's seed), so `train_size=1000` is contained in `train_size=2000`
  and a data-scaling sweep varies only the amount of data.
- Label noise is chosen by the run's seed: it is part of the run, like the init.

The on-disk catalogue (folders, file names) lives in scaletui.core.datasets, which
config validation reads without importing torch; making the files exist (generating MNIST-1D,
downloading where allowed) lives in dataset_files.py, which the runner calls without importing torch.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaletui.core.datasets import DATASETS, dataset_folder
from scaletui.core.specs import DataSpec
from scaletui.engine.dataset_files import TORCHVISION_IDX_CLASSES, mnist1d_path, prepare_dataset

SUBSET_SEED = 0  # fixed: nested training subsets across train_size


class UnsafePickle(pickle.UnpicklingError):
    """A CIFAR batch asked for a global outside numpy's array reconstruction."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One run's data, already on the device."""

    x_train: torch.Tensor  # (N, *input_shape) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor  # (M, *input_shape) float32
    y_test: torch.Tensor  # (M,) int64
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True, eq=False)
class _Raw:
    """A dataset as read from disk, on the CPU: uint8 images or float32 signals."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


# (dataset, resolved data_dir) -> raw arrays: a worker process running many runs reads each dataset once.
_RAW_CACHE: dict[tuple[str, str], _Raw] = {}


def resolve_device(name: str) -> torch.device:
    """`auto` means the GPU when there is one; anything else is a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- reading files


def _torchvision_class(name: str) -> Any:
    from torchvision import datasets as tvd

    return getattr(tvd, TORCHVISION_IDX_CLASSES[name])


def _read_raw(name: str, data_dir: Path) -> _Raw:
    if name == "mnist1d":
        return _read_mnist1d(data_dir)
    if name == "cifar10":
        return _read_cifar10(data_dir)
    return _read_idx(name, data_dir)


def _read_mnist1d(data_dir: Path) -> _Raw:
    path = mnist1d_path(data_dir)
    with np.load(path, allow_pickle=False) as z:
        arrays = [torch.from_numpy(np.ascontiguousarray(z[k])) for k in ("x", "y", "x_test", "y_test")]
    return _Raw(arrays[0].float(), arrays[1].long(), arrays[2].float(), arrays[3].long())


def _read_idx(name: str, data_dir: Path) -> _Raw:
    """MNIST / Fashion-MNIST idx files through torchvision (which checks the magic numbers)."""
    cls = _torchvision_class(name)
    try:
        train = cls(root=str(data_dir), train=True, download=False)
        test = cls(root=str(data_dir), train=False, download=False)
    except (RuntimeError, AssertionError, ValueError) as exc:
        # torchvision reports a corrupt idx file as a bare reshape or assertion error: name the folder.
        folder = dataset_folder(name, data_dir)
        raise ValueError(f"{folder}: not valid idx files ({type(exc).__name__}: {exc})") from exc
    # .data: (N, 28, 28) uint8 -> (N, 1, 28, 28)
    return _Raw(train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long())


def _read_cifar10(data_dir: Path) -> _Raw:
    folder = dataset_folder("cifar10", data_dir)
    train = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    return _Raw(
        torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), x_test, y_test
    )


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)  # (N, 3072): 1024 red, 1024 green, 1024 blue
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    y = torch.as_tensor(list(batch[b"labels"]), dtype=torch.int64)
    return x, y


def _array_reconstructor() -> Any:
    # The function numpy's pickles name as (numpy.core|numpy._core).multiarray._reconstruct,
    # fetched without importing the deprecated numpy.core alias.
    return np.zeros(1).__reduce__()[0]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles exactly what CIFAR-10's python batches contain: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _array_reconstructor,
        ("numpy._core.multiarray", "_reconstruct"): _array_reconstructor,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise UnsafePickle(f"refusing to unpickle global {module}.{name} (not part of the CIFAR-10 format)")
        return factory()


def _raw(spec: DataSpec, data_dir: Path) -> _Raw:
    """The dataset's arrays, from this process's cache or (made available and) read from disk."""
    key = (spec.dataset, str(Path(data_dir).resolve()))
    if key not in _RAW_CACHE:
        prepare_dataset(spec, data_dir)
        _RAW_CACHE[key] = _read_raw(spec.dataset, Path(data_dir))
    return _RAW_CACHE[key]


# --------------------------------------------------------------------------- one run's view


def load_dataset(spec: DataSpec, data_dir: Path, seed: int, device: torch.device) -> Dataset:
    """The run's training subset (with its label noise) and the full test split, normalised, on `device`."""
    raw = _raw(spec, data_dir)
    info = DATASETS[spec.dataset]
    idx = subset_indices(len(raw.y_train), spec.train_size)
    x_train, y_train = _to_float(raw.x_train[idx]), raw.y_train[idx].clone()
    x_test = _to_float(raw.x_test)
    y_train = add_label_noise(y_train, spec.label_noise, info.num_classes, seed)
    if spec.normalize == "standard":
        mean, std = _feature_stats(x_train)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    elif spec.normalize != "none":
        raise ValueError(f"unknown normalize {spec.normalize!r}; expected standard or none")
    return Dataset(
        x_train.to(device), y_train.to(device), x_test.to(device), raw.y_test.to(device),
        info.input_shape, info.num_classes,
    )  # fmt: skip


def subset_indices(n: int, train_size: int | None) -> torch.Tensor:
    """The first `train_size` entries of one fixed permutation: smaller subsets nest in larger ones."""
    size = n if train_size is None else train_size
    if not 0 < size <= n:
        raise ValueError(f"train_size {train_size} out of range: the training split has {n} examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return perm[:size]


def add_label_noise(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace round(fraction * N) labels, picked by `seed`, with a different class each."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {fraction}")
    count = round(fraction * len(y))
    if count == 0:
        return y
    g = torch.Generator().manual_seed(seed)
    which = torch.randperm(len(y), generator=g)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=g)  # 1..C-1: never the same class
    noisy = y.clone()
    noisy[which] = (y[which] + shift) % num_classes
    return noisy


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [0, 1]; float signals stay as they are."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std per feature for (N, F) signals, per channel for (N, C, H, W) images, broadcastable to x."""
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    std, mean = torch.std_mean(x, dim=dims, correction=0, keepdim=True)
    return mean, std.clamp_min(1e-6)
