"""MNIST as a LightningDataModule that serves whole batches out of in-memory tensors.

MNIST is 47 MB as uint8, so each split stays one tensor: a batch is one index-slice and the
conversion to float, normalisation and augmentation happen on the whole batch after it reaches
the device. torchvision still does the download, the checksums and the IDX parsing.
"""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from torchvision.datasets import MNIST
from torchvision.datasets.utils import check_integrity

from digits_lightning.atomic_write import write_atomically
from digits_lightning.augment import Augment
from digits_lightning.resume import EpochShuffle

# Batches are index-slices of tensors already in memory: worker processes would only add IPC.
warnings.filterwarnings("ignore", ".*does not have many workers.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
ARCHIVES = [name for name, _ in MNIST.resources]
# Size and MD5 of each official file once extracted (torchvision checksums the archives only).
EXTRACTED = {
    "train-images-idx3-ubyte": (47040016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7840016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10008, "27ae3e4e09519cfbb04c329615203637"),
}


class MNISTDataError(RuntimeError):
    """A data problem the user can fix; the message names the file and the fix."""


class TensorBatches(Dataset):
    """Rows of two tensors; `__getitems__` gathers a whole batch with one indexing operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select copies whole rows where `images[index]` gathers byte by byte: 20 us instead
        # of 250 for 512 images.
        index = torch.as_tensor(indices, dtype=torch.long).to(self.labels.device)
        return self.images.index_select(0, index), self.labels.index_select(0, index)


class SliceBatches(BatchSampler):
    """Batches of indices as slices of one index tensor per epoch, not lists of Python ints.

    Building a list of 1024 ints and converting it back to a tensor cost about 0.04 ms per step on a
    2-core CPU. A `BatchSampler` still, so Lightning can swap in its distributed sampler under DDP.
    """

    def __iter__(self) -> Iterator[torch.Tensor]:
        sampler = self.sampler
        order = sampler.permutation() if isinstance(sampler, EpochShuffle) else torch.tensor(list(sampler), dtype=torch.long)
        end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, end, self.batch_size):
            yield order[start : start + self.batch_size]


def keep_batch(batch):
    """`collate_fn` for TensorBatches: `__getitems__` already returns the stacked batch."""
    return batch


def _idx_problem(path: Path) -> str | None:
    """Why an extracted IDX file cannot be right (its header or size is not MNIST's), or None."""
    with open(path, "rb") as f:
        raw = f.read(16)
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        return "it is not an uint8 IDX file"
    ndim, expected_ndim = raw[3], 3 if "-idx3-" in path.name else 1
    if ndim != expected_ndim or len(raw) < 4 + 4 * ndim:
        return f"it holds {ndim}-dimensional data, not {'images' if expected_ndim == 3 else 'labels'}"
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        return f"it holds images of {dims[1]}x{dims[2]} pixels, not 28x28"
    n = 1
    for d in dims:
        n *= d
    expected = 4 + 4 * ndim + n
    actual = path.stat().st_size
    if actual != expected:
        return f"it holds {actual} bytes where its header promises {expected} (truncated or damaged)"
    return None


class MNISTDataModule(LightningDataModule):
    """MNIST train/validation/test splits, plus the user's own images for `predict`.

    Args:
        data_dir: Where MNIST lives in torchvision's layout (`<data_dir>/MNIST/raw/`), and where it is
            downloaded to. May also be any folder that directly holds the four official `.gz`
            archives; that folder is only read, and the archives are extracted under `cache_dir`.
        cache_dir: Where archives found directly in `data_dir` are extracted
            (default: `$XDG_CACHE_HOME/digits_lightning`, usually `~/.cache/digits_lightning`).
        download: Fetch missing archives from the internet.
        batch_size: Images per training step (evaluation uses the same size).
        val_size: Training images held out, with a seeded split, for per-epoch validation.
        split_seed: Seed of the train/validation split (independent of the training seed).
        normalize: `unit` scales pixels to [0, 1] (the dense reference); `standard` also subtracts
            the MNIST mean and divides by its standard deviation.
        augment: Random distortions of the training batches (`None`: off; the CLI's default CNN
            distorts half of them, `--data.augment null` turns that off).
        on_device: Keep the whole split on the accelerator, so no batch is copied during training.
        predict_path: An image file, a folder (searched recursively) or a glob, for `predict`.
        predict_batch_size: Images decoded and classified per prediction batch.
        predict_workers: Processes that decode prediction images in parallel.
    """

    def __init__(
        self,
        data_dir: str = "data",
        cache_dir: str | None = None,
        download: bool = True,
        batch_size: int = 256,
        val_size: int = 5000,
        split_seed: int = 0,
        normalize: Literal["unit", "standard"] = "standard",
        augment: Augment | None = None,
        on_device: bool = True,
        predict_path: str | None = None,
        predict_batch_size: int = 256,
        predict_workers: int = 2,
    ) -> None:
        super().__init__()
        for name, value, least in (
            ("batch_size", batch_size, 1), ("val_size", val_size, 1),
            ("predict_batch_size", predict_batch_size, 1), ("predict_workers", predict_workers, 0),
        ):  # fmt: skip
            if value < least:
                raise ValueError(f"data.{name} must be at least {least}, got {value}")
        self.save_hyperparameters(ignore=["augment"])
        self.data_dir = Path(data_dir).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
        self.augment = augment

    # -- locating the files ------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The folder torchvision reads: `data_dir` itself, or the cache that mirrors an archive folder."""
        if _holds_archives(self.data_dir) and not _holds_archives(self.data_dir / "MNIST" / "raw"):
            return self.cache_dir
        return self.data_dir

    @property
    def raw_dir(self) -> Path:
        return self.root / "MNIST" / "raw"

    def prepare_data(self) -> None:
        """Make the four files available (links, checksums, extraction, download) on one process."""
        if self.trainer is not None and self.trainer.state.fn == "predict":
            return  # prediction reads the user's images only: no MNIST needed
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise MNISTDataError(
                f"data.data_dir {self.data_dir} is a file: pass the folder that holds the MNIST archives"
                " (or where to download them)"
            )
        if self.root != self.data_dir:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            for name in ARCHIVES:
                source, link = (self.data_dir / name).resolve(), self.raw_dir / name
                if source.exists() and not (link.is_symlink() and link.resolve() == source):
                    link.unlink(missing_ok=True)
                    link.symlink_to(source)
        self._check_files()
        self._extract()
        missing = [n for n in ARCHIVES if not (self.raw_dir / n).exists() and not self._extracted(n).exists()]
        if missing and not self.hparams.download:
            raise MNISTDataError(self._missing_message(missing, "download is off"))
        for train in (True, False):
            try:  # With every archive present and verified this only extracts: no network.
                MNIST(self.root, train=train, download=True)
            except (RuntimeError, OSError) as err:
                raise MNISTDataError(self._missing_message(missing, f"downloading failed: {_first_line(err)}")) from None

    def _extracted(self, archive: str) -> Path:
        return self.raw_dir / archive.removesuffix(".gz")

    def _check_files(self) -> None:
        """Refuse damaged files before torchvision sees them (it would re-download or mis-parse)."""
        for name, md5 in MNIST.resources:
            extracted, archive = self._extracted(name), self.raw_dir / name
            if extracted.exists():
                problem = _idx_problem(extracted)
                if problem is None and archive.exists() and check_integrity(str(archive), md5):
                    problem = _official_problem(extracted)  # extracted from the official archive beside it
                if problem:
                    raise MNISTDataError(
                        f"{extracted}: {problem}. Delete it; it is extracted again from {name}"
                        " (or downloaded again)."
                    )
            elif archive.exists() and not check_integrity(str(archive), md5):
                raise MNISTDataError(
                    f"{archive.resolve()} is damaged (its MD5 is not the official {md5}). Replace it"
                    " with the official archive, or delete it to download it again."
                )

    def _extract(self) -> None:
        """Extract verified archives atomically: a kill mid-way leaves no partial file that looks extracted."""
        for name in ARCHIVES:
            archive, extracted = self.raw_dir / name, self._extracted(name)
            if archive.exists() and not extracted.exists():
                with gzip.open(archive, "rb") as source:
                    write_atomically(extracted, lambda f: shutil.copyfileobj(source, f, 1 << 20))

    def _missing_message(self, missing: list[str], why: str) -> str:
        return (
            f"MNIST is not complete in {self.raw_dir} and {why}.\n"
            f"Missing: {', '.join(missing) or 'none of the archives, but reading them failed'}.\n"
            "Fix: put the four official archives (" + ", ".join(ARCHIVES) + ") into that folder, or"
            " point --data.data_dir at a folder that holds them, e.g."
            " --data.data_dir ../shared/datasets/mnist"
        )

    # -- splits --------------------------------------------------------------------------------

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            split = MNIST(self.root, train=train, download=False)
        except RuntimeError as err:
            raise MNISTDataError(self._missing_message([], f"loading failed: {_first_line(err)}")) from None
        prefix = "train" if train else "t10k"
        images, labels = self._extracted(f"{prefix}-images-idx3-ubyte"), self._extracted(f"{prefix}-labels-idx1-ubyte")
        fix = " Delete the extracted files so they are extracted again from the official archives."
        if len(split.data) != len(split.targets):
            counts = f"{len(split.data)} images but {labels} {len(split.targets)} labels"
            raise MNISTDataError(f"{images} holds {counts}." + fix)
        if len(split.targets) and not 0 <= int(split.targets.min()) <= int(split.targets.max()) <= 9:
            raise MNISTDataError(f"{labels} holds labels outside 0-9." + fix)
        return split.data, split.targets

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer and self.hparams.on_device else None
        if stage in ("fit", "validate") and not hasattr(self, "train_set"):
            images, labels = self._load(train=True)
            val_size = self.hparams.val_size
            if val_size >= len(labels):
                raise MNISTDataError(
                    f"data.val_size={val_size} leaves no training images out of {len(labels)}."
                )
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
            train, val = order[val_size:], order[:val_size]
            self.train_set = TensorBatches(images[train].to(device), labels[train].to(device))
            self.val_set = TensorBatches(images[val].to(device), labels[val].to(device))
        if stage == "test" and not hasattr(self, "test_set"):
            images, labels = self._load(train=False)
            self.test_set = TensorBatches(images.to(device), labels.to(device))
        if stage == "predict":
            from digits_lightning.prediction import ImageFiles

            if not self.hparams.predict_path:
                raise MNISTDataError("predict needs images: pass --data.predict_path FILE|FOLDER|GLOB")
            self.predict_set = ImageFiles(self.hparams.predict_path)

    def _loader(self, dataset: TensorBatches, shuffle: bool) -> DataLoader:
        # Seeded per epoch, and a private generator for the iterator's own seed: no loader draws from
        # the global generator, so a resumed fit repeats an uninterrupted one exactly (see resume.py).
        sampler = EpochShuffle(len(dataset)) if shuffle else SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_sampler=SliceBatches(sampler, self.hparams.batch_size, drop_last=False),
            generator=torch.Generator(),
            collate_fn=keep_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        loader = self.predict_set.loader(self.hparams.predict_batch_size, self.hparams.predict_workers)
        workers = loader.num_workers  # (fewer than asked for a small folder)
        if workers and self.trainer is not None and self.trainer.strategy.root_device.type == "cpu":
            # The workers decode on the cores the model runs on: a model that spreads each operation
            # over every core then waits for a busy one at every step (10-30x slower). Until teardown.
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
        return loader

    def teardown(self, stage: str) -> None:
        if stage == "predict" and hasattr(self, "_threads"):
            torch.set_num_threads(self._threads)
            del self._threads

    # -- on the device -------------------------------------------------------------------------

    def normalize_images(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 `[N, 28, 28]` (white ink on black, as MNIST) -> float `[N, 1, 28, 28]` as trained."""
        x = images.unsqueeze(1).float().div_(255)
        if augment and self.augment is not None:
            x = self.augment(x)
        if self.hparams.normalize == "standard":
            x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict):  # prediction batches carry paths and errors beside the images
            return {**batch, "image": self.normalize_images(batch["image"])}
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.normalize_images(images, augment=training), labels


def _official_problem(path: Path) -> str | None:
    """Why an extracted file of an official name is not the official file, or None."""
    size, md5 = EXTRACTED[path.name]
    if path.stat().st_size != size:
        return f"it holds {path.stat().st_size} bytes, not the official {size} (truncated or replaced)"
    if not check_integrity(str(path), md5):
        return f"its MD5 is not the official {md5} (damaged)"
    return None


def _holds_archives(folder: Path) -> bool:
    return any((folder / name).exists() for name in ARCHIVES)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digits_lightning"
