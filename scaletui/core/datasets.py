"""What each dataset is and where its files live on disk, without importing torch.

Config validation needs to answer "is this dataset available offline?" before
anything runs, and `scaletui run --dry-run` must stay fast, so the catalogue of
datasets and their on-disk layout lives here, in plain Python. The engine's
loaders (engine/data.py) read the same catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]  # one example, channels first for images
    num_classes: int
    train_examples: int  # size of the full training split
    folder: str  # under the data directory
    files: tuple[str, ...]  # what must exist under `folder` to load offline
    generated: bool = False  # made locally (never needs a download)


# MNIST-1D is generated with a fixed seed as one pool of 12,000 signals split 10,000 / 2,000,
# so `train_size` up to 10,000 draws nested subsets from the same pool and every run of any
# train_size shares one test set.
MNIST1D_TRAIN = 10_000
MNIST1D_TEST = 2_000

_IDX = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DATASETS: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo(
        "mnist1d", (40,), 10, MNIST1D_TRAIN, "mnist1d", ("mnist1d.npz",), generated=True
    ),
    # torchvision's MNIST/FashionMNIST read the unpacked idx files from <root>/<Class>/raw.
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, 60_000, "MNIST/raw", _IDX),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, 60_000, "FashionMNIST/raw", _IDX),
    # The python version of CIFAR-10, as unpacked from cifar-10-python.tar.gz.
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        50_000,
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
    ),
}

IMAGE_DATASETS = frozenset(name for name, info in DATASETS.items() if len(info.input_shape) == 3)


def dataset_folder(name: str, data_dir: Path) -> Path:
    return Path(data_dir) / DATASETS[name].folder


def missing_files(name: str, data_dir: Path) -> list[str]:
    """Files a dataset still needs under `data_dir`; generated datasets never miss any."""
    info = DATASETS[name]
    if info.generated:
        return []
    folder = dataset_folder(name, data_dir)
    return [f for f in info.files if not (folder / f).exists()]


def unavailable_message(name: str, data_dir: Path) -> str:
    """The one line a user sees when a dataset cannot be had offline: where to put what."""
    missing = missing_files(name, data_dir)
    folder = dataset_folder(name, data_dir)
    return (
        f"{name} is not available offline: put {', '.join(missing)} in {folder} "
        f"(or set data.download = true on a machine with network access)"
    )


class DatasetUnavailable(Exception):
    """The dataset's files are not on disk and could not be fetched; the message says where to put them."""

    def __init__(self, name: str, data_dir: Path, reason: str | None = None) -> None:
        message = unavailable_message(name, data_dir)
        if reason:
            message += f"; download failed: {reason}"
        super().__init__(message)
        self.dataset = name
        self.folder = dataset_folder(name, data_dir)
