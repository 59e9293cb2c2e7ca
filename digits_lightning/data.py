"""MNIST (or another symbol set: `--data.dataset`) as a LightningDataModule that serves whole batches
out of in-memory tensors.

MNIST is 47 MB as uint8, so each split stays one tensor: a batch is one index-slice, and the
conversion to float in [0, 1] and the augmentation happen on the whole batch after it reaches the
device. The model normalises its inputs itself (`models.DigitClassifier.forward`).

Under DDP this module shards the data itself (the CLI sets `use_distributed_sampler=False`):
training keeps its seeded epoch shuffle, padded to equal shards as Lightning's sampler would,
and validation and test shards are disjoint and unpadded, so every image counts exactly once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from digits_lightning.archives import ArchiveFolder, DataError, default_cache_dir
from digits_lightning.augment import Augment
from digits_lightning.datasets import SYMBOL_SETS
from digits_lightning.errors import SettingError
from digits_lightning.resume import EpochShuffle

# Batches are index-slices of tensors already in memory: worker processes would only add IPC.
warnings.filterwarnings("ignore", ".*does not have many workers.*")


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


class Shard(Sampler[int]):
    """This process's share of `0..n-1`: every `world`-th index from `rank`, in order, unpadded."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def permutation(self) -> torch.Tensor:
        return torch.arange(self.rank, self.n, self.world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())


class SliceBatches(BatchSampler):
    """Batches of indices as slices of one index tensor per epoch, not lists of Python ints.

    Building a list of 1024 ints and converting it back to a tensor cost about 0.04 ms per step on a
    2-core CPU.
    """

    def __iter__(self) -> Iterator[torch.Tensor]:
        sampler = self.sampler
        if hasattr(sampler, "permutation"):
            order = sampler.permutation()
        else:
            order = torch.tensor(list(sampler), dtype=torch.long)
        end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, end, self.batch_size):
            yield order[start : start + self.batch_size]


def keep_batch(batch):
    """`collate_fn` for TensorBatches: `__getitems__` already returns the stacked batch."""
    return batch


DatasetName = Literal["mnist", "fashion", "kmnist", "emnist-digits", "emnist-letters", "emnist-balanced"]


class DigitsDataModule(LightningDataModule):
    """A symbol set's train/validation/test splits (MNIST by default), plus the user's own images for `predict`.

    Args:
        dataset: The symbol set, read by torchvision's own class: `mnist` (MNIST), `fashion`
            (FashionMNIST), `kmnist` (KMNIST), `emnist-digits`, `emnist-letters`, `emnist-balanced`
            (EMNIST's splits, shown and trained upright; letters as classes a-z). The model learns its
            class names, pixel statistics and user-image convention (`datasets.SYMBOL_SETS`). Saved in
            checkpoints: `validate`, `test` and a resumed `fit` use the checkpoint's.
        data_dir: Where the set lives in torchvision's layout (`<data_dir>/MNIST/raw/`,
            `FashionMNIST/raw/`, `KMNIST/raw/`, `EMNIST/raw/`), and where it is downloaded to. May also be
            any folder that directly holds the official archives (four `.gz` files; EMNIST's
            `gzip.zip`); that folder is only read, and the archives are extracted under `cache_dir`.
        cache_dir: Where archives found directly in `data_dir` are extracted
            (default: `$XDG_CACHE_HOME/digits_lightning`, usually `~/.cache/digits_lightning`).
        download: Fetch missing archives from the internet.
        batch_size: Images per training step (evaluation uses the same size).
        val_size: Training images held out, with a seeded split, for per-epoch validation. Saved in
            checkpoints: `validate` and a resumed `fit` use the checkpoint's split.
        split_seed: Seed of the train/validation split (independent of the training seed).
        augment: Random distortions of the training batches (`None`: off; the CLI's default CNN
            distorts half of them, `--data.augment null` turns that off).
        flip: Share of the training images mirrored left to right (for Fashion-MNIST, whose clothes
            mean the same mirrored; never for glyphs, which do not).
        on_device: Keep the whole split on the accelerator, so no batch is copied during training.
        predict_path: An image file, a folder (searched recursively) or a glob, for `predict`.
        predict_batch_size: Images decoded and classified per prediction batch.
        predict_workers: Processes that decode prediction images in parallel.
    """

    def __init__(
        self,
        data_dir: str = "data",
        dataset: DatasetName = "mnist",
        cache_dir: str | None = None,
        download: bool = True,
        batch_size: int = 256,
        val_size: int = 5000,
        split_seed: int = 0,
        augment: Augment | None = None,
        flip: float = 0.0,
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
                raise SettingError(f"data.{name} must be at least {least}, got {value}")
        if not 0 <= flip <= 1:
            raise SettingError(f"data.flip is a share of the images: between 0 and 1, got {flip}")
        if dataset not in SYMBOL_SETS:
            raise SettingError(f"data.dataset must be one of {', '.join(SYMBOL_SETS)}, got {dataset!r}")
        self.save_hyperparameters(ignore=["augment"])
        self.augment = augment
        self.symbol_set = SYMBOL_SETS[dataset]
        self.files = ArchiveFolder(
            Path(data_dir).expanduser(), Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), download,
            self.symbol_set,
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.symbol_set.class_names

    def prepare_data(self) -> None:
        """Make the set's files available (links, checksums, extraction, download) on one process."""
        if self.trainer is not None and self.trainer.state.fn == "predict":
            return  # prediction reads the user's images only: no MNIST needed
        self.files.prepare()

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer and self.hparams.on_device else None
        if stage in ("fit", "validate") and not hasattr(self, "train_set"):
            images, labels = self.files.load(train=True)
            val_size = self.hparams.val_size
            if val_size >= len(labels):
                raise DataError(f"data.val_size={val_size} leaves no training images out of {len(labels)}.")
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
            train, val = order[val_size:], order[:val_size]
            self.train_set = TensorBatches(images[train].to(device), labels[train].to(device))
            self.val_set = TensorBatches(images[val].to(device), labels[val].to(device))
        if stage == "test" and not hasattr(self, "test_set"):
            images, labels = self.files.load(train=False)
            self.test_set = TensorBatches(images.to(device), labels.to(device))
        if stage == "predict":
            from digits_lightning.prediction import ImageFiles

            if not self.hparams.predict_path:
                raise DataError("predict needs images: pass --data.predict_path FILE|FOLDER|GLOB")
            model = self.trainer.lightning_module if self.trainer is not None else None
            convention = (model.hparams.get("convention") if model is not None else None) or self.symbol_set.convention
            self.predict_set = ImageFiles(self.hparams.predict_path, convention)

    def _loader(self, dataset: TensorBatches, shuffle: bool) -> DataLoader:
        # Seeded per epoch, and a private generator for the iterator's own seed: no loader draws from
        # the global generator, so a resumed fit repeats an uninterrupted one exactly (see resume.py).
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffle(len(dataset), rank, world) if shuffle else Shard(len(dataset), rank, world)
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
        return self.predict_set.loader(self.hparams.predict_batch_size, self.hparams.predict_workers)

    # -- on the device -------------------------------------------------------------------------

    def to_inputs(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 `[N, 28, 28]` (white ink on black, as MNIST) -> float `[N, 1, 28, 28]` in [0, 1]."""
        x = images.unsqueeze(1).float().div_(255)
        if augment and self.augment is not None:
            x = self.augment(x)
        if augment and self.hparams.flip:
            mirrored = torch.rand(len(x), device=x.device) < self.hparams.flip
            x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict):  # prediction batches carry paths and errors beside the images
            return {**batch, "image": self.to_inputs(batch["image"])}
        if not isinstance(batch, (tuple, list)):  # e.g. the model's example input, for its summary
            return batch
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.to_inputs(images, augment=training), labels

    def training_samples(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` training images as the model gets them (distorted when augmentation is
        on; seeded, and outside the training's own random stream), with their labels."""
        if not hasattr(self, "train_set"):
            self.files.prepare()
            self.setup("fit")
        images, labels = self.train_set.images[:count], self.train_set.labels[:count]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x = self.to_inputs(images.cpu(), augment=True)
        return x, labels.cpu()


MNISTDataModule = DigitsDataModule  # the name of before other symbol sets: the same class
