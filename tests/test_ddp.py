"""Lightning's own DDP (2 CPU processes over gloo) on tiny data whose splits do not divide evenly:
each rank trains on its own shard, validation and test count every image exactly once, and a
resumed DDP fit ends exactly where an uninterrupted one does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from digits_lightning.cli import main
from tests.helpers import write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """1,201 training images (1,000 after a validation split of 201) and 301 test images: odd counts."""
    return write_tiny_mnist(tmp_path_factory.mktemp("uneven"), n_train=1201, n_test=301)


def args(data_dir: Path, *extra: str) -> list[str]:
    return [
        f"--data.data_dir={data_dir}",
        "--data.val_size=201",
        "--data.batch_size=100",
        "--data.augment.p=0.8",  # so that every rank draws random numbers
        "--model=DenseClassifier",
        "--model.one_cycle=false",  # a schedule of fixed length could not be resumed for more epochs
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def ddp_fit(workdir: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "digits_lightning", "fit", *args(data_dir, *extra),
         "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def last_scalar(workdir: Path, tag: str, version: int = 0) -> float:
    events = EventAccumulator(str(workdir / "lightning_logs" / "dense" / f"version_{version}"))
    events.Reload()
    return max(events.Scalars(tag), key=lambda e: e.step).value


def test_ddp_shards_training_and_counts_each_evaluation_image_once(uneven, tmp_path, capsys):
    work = tmp_path / "ddp"
    fit = ddp_fit(work, uneven, "--trainer.max_epochs=1")
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in fit.stderr + fit.stdout
    assert fit.stdout.count("Test accuracy:") == 1  # printed by rank 0 only
    # 1,000 training images over 2 processes in batches of 100: 5 optimiser steps, not 10.
    (best,) = (work / "checkpoints" / "dense").glob("epoch=*.ckpt")
    assert torch.load(best, weights_only=True, map_location="cpu")["global_step"] == 5
    ddp_test, ddp_val = last_scalar(work, "test_acc"), last_scalar(work, "val_acc")

    # One process, the same checkpoint: the same figures (a padded shard would count one of the 301
    # test or 201 validation images twice, and move them by ~0.3 points).
    single = tmp_path / "single"
    single.mkdir()
    os.chdir(single)
    main(["validate", *args(uneven), f"--ckpt_path={best}"])
    main(["test", *args(uneven), f"--ckpt_path={best}"])
    assert last_scalar(single, "val_acc", version=0) == pytest.approx(ddp_val, abs=1e-6)
    assert last_scalar(single, "test_acc", version=1) == pytest.approx(ddp_test, abs=1e-6)
    assert abs(ddp_test * 301 - round(ddp_test * 301)) < 1e-3  # a count out of 301 images, not of 302


def test_a_resumed_ddp_fit_ends_where_an_uninterrupted_one_does(uneven, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    ddp_fit(whole, uneven, "--trainer.max_epochs=2", "--test_after_fit=false")
    ddp_fit(resumed, uneven, "--trainer.max_epochs=1", "--test_after_fit=false")
    ddp_fit(resumed, uneven, "--trainer.max_epochs=2", "--test_after_fit=false", "--ckpt_path=last")
    a = torch.load(whole / "checkpoints" / "dense" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    b = torch.load(resumed / "checkpoints" / "dense" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
