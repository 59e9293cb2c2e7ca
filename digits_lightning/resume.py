"""What makes a killed `fit` resume exactly: every epoch's randomness is a function of (seed, epoch).

`fit --ckpt_path last` restores the weights, the optimiser, the one-cycle schedule and the loop
counters (Lightning does that), but not the random number generators, and Lightning draws from the
global generator at moments that differ between a fresh and a resumed run (creating a data-loader
iterator, the sanity check). So the shuffle order comes from `EpochShuffle`, which needs no global
generator, and `SeedEachEpoch` reseeds the global generators (augmentation, dropout) at the start of
every training epoch. A run resumed from the end of epoch N then draws exactly the numbers an
uninterrupted run draws from epoch N+1 on. Under DDP each process draws its own numbers (its rank
is part of the seed), so the processes do not repeat each other's augmentation and dropout.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import Sampler


def training_seed() -> int | None:
    """The `seed_everything` of this run (Lightning keeps it in `PL_GLOBAL_SEED`), or None."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 32-bit seed for one epoch of one process (neighbours give unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochShuffle(Sampler[int]):
    """A random order of `0..n-1` that depends only on the training seed and the epoch, and this
    process's share of it: every `world`-th index from `rank`, the order padded with its own start
    so that every process gets as many (as torch's `DistributedSampler` does).

    Lightning calls `set_epoch` before every training epoch.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world, self.epoch = n, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(epoch_seed(training_seed() or 0, self.epoch))
        order = torch.randperm(self.n, generator=generator)  # the same on every process
        if self.world == 1:
            return order
        padded = torch.cat([order, order[: len(self) * self.world - self.n]])
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())


class SeedEachEpoch(Callback):
    """Reseeds torch (CPU and every GPU), NumPy and Python at the start of each training epoch.

    Does nothing when the run has no seed (`seed_everything: false`): such runs are not repeatable.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed = training_seed()
        if seed is None:
            return
        seed = epoch_seed(seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
