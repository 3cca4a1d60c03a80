"""Dataset files on disk: generated (MNIST-1D) or downloaded (where allowed) once, checked before training.

Split from data.py so that the runner, which only makes sure the files are there before its workers
race for them, never imports torch: a torch import is ~3 s of CPU on a 2-core machine, paid by every
sweep before its first run starts. data.py (the workers' side) reads these files into tensors.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from scaletui.core.datasets import (
    DATASETS,
    MNIST1D_TEST,
    MNIST1D_TRAIN,
    DatasetUnavailable,
    dataset_folder,
    missing_files,
)
from scaletui.core.files import write_atomically
from scaletui.core.specs import DataSpec

MNIST1D_SEED = 42  # fixed: every run of every sweep sees the same MNIST-1D pool
MNIST1D_FILE = "mnist1d.npz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TORCHVISION_IDX_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # idx datasets torchvision reads


def mnist1d_path(data_dir: Path) -> Path:
    """Where the generated MNIST-1D archive lives under `data_dir`."""
    return dataset_folder("mnist1d", data_dir) / MNIST1D_FILE


def prepare_dataset(spec: DataSpec, data_dir: Path) -> None:
    """Make sure `spec.dataset`'s files are on disk, generating or downloading them if allowed."""
    name = spec.dataset
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    data_dir = Path(data_dir)
    if name == "mnist1d":
        _prepare_mnist1d(data_dir)
        return
    if not missing_files(name, data_dir):
        return
    if not spec.download:
        raise DatasetUnavailable(name, data_dir)
    try:
        _download(name, data_dir)
    except Exception as exc:  # offline, mirror down, bad checksum: all mean "not available"
        raise DatasetUnavailable(name, data_dir, _one_line(exc)) from exc
    if missing_files(name, data_dir):
        raise DatasetUnavailable(name, data_dir, "files still missing after download")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _download(name: str, data_dir: Path) -> None:
    if name == "cifar10":
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(
            CIFAR10_URL, download_root=str(data_dir), filename="cifar-10-python.tar.gz", md5=CIFAR10_MD5
        )
    else:
        from torchvision import datasets as tvd

        getattr(tvd, TORCHVISION_IDX_CLASSES[name])(root=str(data_dir), train=True, download=True)


def _prepare_mnist1d(data_dir: Path) -> None:
    """Generate MNIST-1D once with a fixed seed and store it as a pickle-free .npz."""
    path = mnist1d_path(data_dir)
    if path.exists():
        return
    arrays = _generate_mnist1d()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two processes racing both write whole files and the last rename wins; a reader never sees a
    # half-written archive.
    write_atomically(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy stubs: keywords


def _generate_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = MNIST1D_TRAIN + MNIST1D_TEST
    args.train_split = MNIST1D_TRAIN / (MNIST1D_TRAIN + MNIST1D_TEST)
    args.seed = MNIST1D_SEED
    # make_dataset reseeds the global `random` and numpy generators; put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }
