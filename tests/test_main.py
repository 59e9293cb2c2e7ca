"""The process entry, `python -m digits_lightning`: it ends the process without Python's teardown
of the modules, so each test here runs the real command in a process of its own and checks that
nothing the command writes or says is lost, and that it ends with the documented exit status."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from digits_lightning.errors import EXIT_NOTHING_PREDICTED, EXIT_USER_ERROR
from tests.helpers import draw

REPO = Path(__file__).resolve().parents[1]


def command(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "digits_lightning", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def fitted(tiny_mnist, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A dense fit (2 epochs, then its test) run as its own process: its folder and its outcome."""
    folder = tmp_path_factory.mktemp("fit")
    done = command(
        folder, "fit", "--model=DenseClassifier", f"--data.data_dir={tiny_mnist}", "--data.val_size=200",
        "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
    )  # fmt: skip
    return folder, done


def test_a_fit_leaves_its_report_event_files_and_checkpoints_whole(fitted):
    folder, done = fitted
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Test accuracy:" in done.stdout
    (run,) = (folder / "lightning_logs" / "dense").glob("version_*")
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("epoch")]  # written while training ...
    assert len(events.Scalars("val_acc")) == 2  # ... once per epoch ...
    assert len(events.Scalars("test_acc")) == 1  # ... and by the final test, just before the exit
    checkpoints = sorted((folder / "checkpoints" / "dense").glob("*.ckpt"))
    assert len(checkpoints) >= 2  # the best and last.ckpt
    for path in checkpoints:
        assert torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


def test_a_prediction_writes_every_row_and_says_so(fitted, tmp_path):
    folder, _ = fitted
    (best,) = (folder / "checkpoints" / "dense").glob("epoch=*.ckpt")
    images = tmp_path / "images"
    images.mkdir()
    draw("3", size=120).save(images / "three.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    done = command(tmp_path, "predict", f"--ckpt_path={best}", f"--data.predict_path={images}")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(f)}
    assert set(rows) == {"three.png", "broken.png"}
    assert rows["three.png"]["digit"] != "" and rows["three.png"]["error"] == ""
    assert rows["broken.png"]["digit"] == "" and "not an image" in rows["broken.png"]["error"]
    assert "Failed: 1" in done.stdout and "predictions.csv" in done.stdout


def test_a_users_mistake_ends_in_one_line_and_status_2(fitted, tmp_path):
    folder, _ = fitted
    (best,) = (folder / "checkpoints" / "dense").glob("epoch=*.ckpt")
    done = command(tmp_path, "predict", f"--ckpt_path={best}", f"--data.predict_path={tmp_path / 'no such folder'}")
    assert done.returncode == EXIT_USER_ERROR
    (line,) = [line for line in done.stderr.splitlines() if "no such folder" in line]
    assert line.startswith("error: ") and "Traceback" not in done.stderr


def test_nothing_readable_to_predict_ends_in_status_3(fitted, tmp_path):
    folder, _ = fitted
    (best,) = (folder / "checkpoints" / "dense").glob("epoch=*.ckpt")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    done = command(tmp_path, "predict", f"--ckpt_path={best}", f"--data.predict_path={tmp_path / 'broken.png'}")
    assert done.returncode == EXIT_NOTHING_PREDICTED, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1].startswith("error: none of the 1 images")
    with open(tmp_path / "predictions.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert Path(row["path"]).name == "broken.png" and row["error"]


def test_the_exit_does_not_wait_forever_for_an_idle_thread_pool(tmp_path):
    # torch.compile (`--model.compile true`) leaves a ThreadPoolExecutor's workers waiting for work;
    # Python's own exit tells them to stop before it joins them, and so must ours.
    script = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from digits_lightning.__main__ import exit_now\n"
        "pool = ThreadPoolExecutor(2)\n"
        "print(pool.submit(sum, [1, 2]).result(), flush=True)\n"
        "exit_now(0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "3\n", done.stderr[-3000:]
