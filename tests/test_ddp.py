"""Lightning's own DDP (2 CPU processes over gloo) on the tiny data: shards and synchronised metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from digits_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_fit_with_ddp_on_two_cpu_processes(tiny_mnist, in_tmp, capsys):
    args = [
        f"--data.data_dir={tiny_mnist}",
        "--data.val_size=200",
        "--data.batch_size=100",
        "--model=DenseClassifier",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    fit = subprocess.run(
        [sys.executable, "-m", "digits_lightning", "fit", *args, "--trainer.max_epochs=1",
         "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=in_tmp,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in fit.stderr + fit.stdout
    assert fit.stdout.count("Test accuracy:") == 1  # printed by rank 0 only
    ddp_acc = fit.stdout.split("Test accuracy: ")[1].split("%")[0]

    # 1,000 training images, 2 processes, batches of 100: each rank gets its own 500, so one
    # epoch is 5 optimiser steps, not 10.
    import torch

    (best,) = (in_tmp / "checkpoints" / "dense").glob("epoch=*.ckpt")
    assert torch.load(best, weights_only=True, map_location="cpu")["global_step"] == 5

    # The DDP test accuracy (each rank tested half the test set) is the synchronised one: the same
    # checkpoint tested in a single process on the whole test set gives the same figure.
    main(["test", *args, f"--ckpt_path={best}"])
    assert f"Test accuracy: {ddp_acc}%" in capsys.readouterr().out
