"""Reliability: a fit killed with SIGKILL resumes to the very same result, runs repeat exactly,
checkpoints are never half-written, and damaged data or a bad configuration ends with one line.

The runs are real CLI invocations on the tiny data set: in-process, and as `python -m
digits_lightning` subprocesses where a process has to die. Metrics are read back from the
TensorBoard event files the runs wrote, weights from their checkpoints.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from digits_lightning.checkpoints import AtomicCheckpointIO
from digits_lightning.cli import main
from digits_lightning.archives import ARCHIVES, DataError
from digits_lightning.data import MNISTDataModule
from tests.helpers import render_digits, write_idx, write_tiny_mnist

REPO = Path(__file__).resolve().parents[1]
METRICS = ("val_acc", "val_loss", "test_acc", "test_loss")


def fit_args(data_dir: Path, *extra: str) -> list[str]:
    """Dense model with augmentation on, so both the shuffle and the augmentation draw random numbers."""
    return [
        "fit",
        "--model=DenseClassifier",
        f"--data.data_dir={data_dir}",
        "--data.val_size=200",
        "--data.batch_size=100",
        "--data.augment.p=0.8",
        "--trainer.max_epochs=3",
        "--trainer.deterministic=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def fit_in(workdir: Path, *args: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        main(list(args))


def newest_run(workdir: Path) -> EventAccumulator:
    runs = sorted((workdir / "lightning_logs" / "dense").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    events = EventAccumulator(str(runs[-1]))
    events.Reload()
    return events


def logged(workdir: Path) -> dict[str, float]:
    """The last value of each metric in the newest TensorBoard run of `workdir`."""
    events = newest_run(workdir)
    return {tag: events.Scalars(tag)[-1].value for tag in METRICS if tag in events.Tags()["scalars"]}


def same_threads_env() -> dict[str, str]:
    """The environment for a run in a subprocess that resumes, or is resumed by, runs in this process:
    torch on as many threads as here, since float sums split over other thread counts differ in
    their last bits, and "the same result" means bit for bit."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tiny_mnist, tmp_path_factory) -> Path:
    """The working folder of one uninterrupted fit (then test) of `fit_args`."""
    workdir = tmp_path_factory.mktemp("reference")
    fit_in(workdir, *fit_args(tiny_mnist))
    return workdir


# -- resume after a kill --------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_killed_with_sigkill_resumes_to_the_same_result(tiny_mnist, reference, tmp_path):
    command = [sys.executable, "-m", "digits_lightning", *fit_args(tiny_mnist)]
    last = tmp_path / "checkpoints" / "dense" / "last.ckpt"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(command, cwd=tmp_path, env=same_threads_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not last.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        run.send_signal(signal.SIGKILL)  # during the second epoch: the first one's last.ckpt just appeared
        assert run.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at < 2  # before the end: the resumed run has epochs left to train

    fit_in(tmp_path, *fit_args(tiny_mnist, "--ckpt_path=last"))
    assert len(newest_run(tmp_path).Scalars("val_acc")) == 2 - killed_at  # it trained only the epochs left
    assert logged(tmp_path) == logged(reference)  # final val_acc, val_loss, test_acc, test_loss: bit for bit
    assert_same_weights(last, reference / "checkpoints" / "dense" / "last.ckpt")

    # A fit killed after its last epoch (say, during the final test): resuming trains nothing, tests the same.
    fit_in(tmp_path, *fit_args(tiny_mnist, "--ckpt_path=last"))
    assert "val_acc" not in newest_run(tmp_path).Tags()["scalars"]
    assert {k: v for k, v in logged(tmp_path).items() if k.startswith("test")} == {
        k: v for k, v in logged(reference).items() if k.startswith("test")
    }


DIE_BEFORE_SECOND_LAST_CKPT = """
import os, signal, sys
from lightning.pytorch.callbacks import ModelCheckpoint
from digits_lightning.cli import main

save_last = ModelCheckpoint._save_last_checkpoint
def die_in_second_epoch(self, trainer, candidates):
    if trainer.current_epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    save_last(self, trainer, candidates)
ModelCheckpoint._save_last_checkpoint = die_in_second_epoch
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_fit_killed_between_best_and_last_checkpoint_resumes_to_the_same_result(tiny_mnist, reference, tmp_path):
    # The narrowest window: epoch 1's best checkpoint is written (and epoch 0's deleted), last.ckpt not yet.
    killed = subprocess.run([sys.executable, "-c", DIE_BEFORE_SECOND_LAST_CKPT, *fit_args(tiny_mnist)], cwd=tmp_path, env=same_threads_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = tmp_path / "checkpoints" / "dense"
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 0 and list(folder.glob("epoch=01-*.ckpt"))

    fit_in(tmp_path, *fit_args(tiny_mnist, "--ckpt_path=last"))
    assert logged(tmp_path) == logged(reference)
    assert_same_weights(folder / "last.ckpt", reference / "checkpoints" / "dense" / "last.ckpt")


def test_same_config_twice_gives_identical_metrics_and_weights(tiny_mnist, reference, tmp_path):
    fit_in(tmp_path, *fit_args(tiny_mnist))
    assert set(logged(reference)) == set(METRICS)  # the comparisons above compare something
    assert logged(tmp_path) == logged(reference)
    assert_same_weights(tmp_path / "checkpoints" / "dense" / "last.ckpt", reference / "checkpoints" / "dense" / "last.ckpt")


# -- checkpoints are written atomically -----------------------------------------------------------

KILL_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from digits_lightning.atomic_write import write_atomically

new = Path(sys.argv[2]).read_bytes()
def half_then_die(f):
    f.write(new[: len(new) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
write_atomically(Path(sys.argv[1]), half_then_die)
"""


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 1}, last)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 2}, tmp_path / "next.ckpt")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, str(last), str(tmp_path / "next.ckpt")],
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert io.load_checkpoint(last)["epoch"] == 1  # the old checkpoint, whole
    (leftover,) = last.parent.glob(".last.ckpt.*.tmp")  # hidden, and not taken for a checkpoint by Lightning
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 2}, last)
    assert not leftover.exists() and io.load_checkpoint(last)["epoch"] == 2
    (tmp_path / "plain").touch()
    assert last.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not the temporary file's 0600


def test_a_real_fit_writes_its_checkpoints_by_renaming_whole_files(tiny_mnist, in_tmp, monkeypatch):
    """Every checkpoint of a CLI fit appears by a rename of a complete, fsynced file from the same folder."""
    renamed, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append((Path(src), Path(dst))) or real_replace(src, dst))
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    fit_in(in_tmp, *fit_args(tiny_mnist, "--trainer.max_epochs=1", "--test_after_fit=false"))
    checkpoints = sorted((in_tmp / "checkpoints" / "dense").glob("*.ckpt"))
    assert [p.name for p in checkpoints][-1] == "last.ckpt" and len(checkpoints) == 2
    for ckpt in checkpoints:
        (source,) = [src for src, dst in renamed if dst == ckpt]
        assert source.parent == ckpt.parent and source.name.startswith(f".{ckpt.name}.")
    assert synced


# -- damaged data is refused, named with the fix --------------------------------------------------


def _tiny_raw(tmp_path: Path) -> Path:
    return write_tiny_mnist(tmp_path, n_train=300, n_test=100) / "MNIST" / "raw"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.write_bytes(b"<html>503 Service Unavailable</html>"), r"it is not an uint8 IDX file"),
        (lambda f: write_idx(f, render_digits(10, 0)[0][:, :20, :20]), r"it holds images of 20x20 pixels"),
        (lambda f: write_idx(f, render_digits(10, 0)[1]), r"it holds 1-dimensional data, not images"),
    ],
    ids=["not-idx", "wrong-size-images", "labels-as-images"],
)
def test_damaged_extracted_file_is_refused(tmp_path, damage, message):
    # (A truncated one: test_data.py::test_truncated_extracted_file_is_refused.)
    raw = _tiny_raw(tmp_path)
    damage(raw / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: " + message + r".*Delete it"):
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()


def test_images_and_labels_that_disagree_are_refused(tmp_path):
    raw = _tiny_raw(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", render_digits(290, 1)[1])  # a consistent file, 10 labels short
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=50)
    dm.prepare_data()
    counts = r"train-images-idx3-ubyte holds 300 images but .*train-labels-idx1-ubyte 290 labels"
    with pytest.raises(DataError, match=counts):
        dm.setup("fit")


def test_labels_outside_0_to_9_are_refused(tmp_path):
    raw = _tiny_raw(tmp_path)
    labels = render_digits(100, 2)[1]
    labels[5] = 12
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte holds labels outside 0-9"):
        MNISTDataModule(data_dir=str(tmp_path)).setup("test")


def test_truncated_official_archive_is_refused(real_mnist, tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    for name in ARCHIVES:
        (archives / name).symlink_to(real_mnist / name)
    (archives / "t10k-labels-idx1-ubyte.gz").unlink()
    (archives / "t10k-labels-idx1-ubyte.gz").write_bytes((real_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2000])
    dm = MNISTDataModule(data_dir=str(archives), cache_dir=str(tmp_path / "cache"), download=False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is damaged \(its MD5 is not the official"):
        dm.prepare_data()


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (lambda f: write_idx(f, render_digits(100, 3)[1]), r"it holds 108 bytes, not the official 10008"),
        (lambda f: f.write_bytes(f.read_bytes()[:-1] + b"\x07"), r"its MD5 is not the official"),
    ],
    ids=["other-size", "same-size-other-content"],
)
def test_extracted_file_that_is_not_the_official_one_is_refused(real_mnist, tmp_path, replace, message):
    dm = MNISTDataModule(data_dir=str(real_mnist), cache_dir=str(tmp_path), download=False)
    dm.prepare_data()  # extracts (atomically: no temporary file is left) and checks all four
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    assert labels.stat().st_size == 10008 and not list(labels.parent.glob(".*.tmp"))
    replace(labels)
    again = MNISTDataModule(data_dir=str(real_mnist), cache_dir=str(tmp_path), download=False)  # the next run
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: " + message + r".*Delete it; it is extracted again"):
        again.prepare_data()


# -- configuration errors: one line, no traceback, exit status 2 ----------------------------------


def one_line_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # the error alone: no warning or log before it
    return err.rstrip("\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model=Foo"], "error: unknown model 'Foo': use --model DenseClassifier or --model CNNClassifier"),
        (["--model=torch.nn.Linear"], "error: --model: Import path does not correspond to a subclass of DigitClassifier"),
        (["--model.lr=-0.01"], "error: model.lr must be positive, got -0.01"),
        (["--model=DenseClassifier", "--model.lr=-1"], "error: model.lr must be positive, got -1.0"),
        (["--trainer.max_epochs=0"], "error: trainer.max_epochs must be at least 1 (or -1 for no limit), got 0"),
        (["--config=nowhere.yaml"], "error: --config: File does not exist"),
        (["--ckpt_path=nowhere.ckpt"], "error: nowhere.ckpt: no such checkpoint file."),
        (["--data.data_dir=nowhere", "--data.download=false"], "error: MNIST is not complete in nowhere/MNIST/raw and"),
        (["--model.normalize=zscore"], "error: --model.normalize: Expected a typing.Literal['unit', 'standard']"),
        (["--data.batch_size=0"], "error: data.batch_size must be at least 1, got 0"),
        (["--model.label_smoothing=1.5"], "error: model.label_smoothing must be in [0, 1], got 1.5"),
        (["--model.betas=[0.9, 1.0]"], "error: model.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        (["--model.weight_decay=-1"], "error: model.weight_decay must not be negative"),
        (["--model.dropout=1"], "error: model.dropout must be in [0, 1)"),
        (["--model.channels=[0, 32]"], "error: model.channels must be two counts"),
        (["--model=DenseClassifier", "--model.hidden=0"], "error: model.hidden must be at least 1, got 0"),
        (["--data.predict_batch_size=0"], "error: data.predict_batch_size must be at least 1, got 0"),
        (["--data.predict_workers=-1"], "error: data.predict_workers must be at least 0, got -1"),
        (["--data.augment.p=1.5"], "error: data.augment.p is a share of the images: at most 1, got 1.5"),
        (["--data.augment.scale=1"], "error: data.augment.scale must be below 1"),
        (["--data.augment.shift=-2"], "error: data.augment.shift must be at least 0, got -2"),
        (["--data.data_dir=mnist.zip"], "error: data.data_dir mnist.zip is a file: pass the folder that holds the MNIST archives"),
        pytest.param(
            ["--trainer.accelerator=gpu"], "error: No supported gpu backend found! (--trainer.accelerator auto uses a GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where there is none"),
        ),
    ],
    ids=["unknown-model", "not-a-model", "negative-lr", "negative-lr-dense", "zero-epochs", "no-config",
         "no-checkpoint", "no-data", "bad-choice", "zero-batch", "label-smoothing", "betas", "weight-decay",
         "dropout", "channels", "hidden", "predict-batch", "predict-workers", "augment-share", "augment-scale",
         "augment-negative", "data-dir-file", "missing-gpu"],  # fmt: skip
)
def test_configuration_error_is_one_line(in_tmp, capsys, args, message):
    (in_tmp / "mnist.zip").write_bytes(b"PK")  # a file where a folder belongs
    assert one_line_error(capsys, ["fit", *args]).startswith(message)


def test_unusable_checkpoints_are_one_line(reference, tiny_mnist, in_tmp, capsys):
    good = reference / "checkpoints" / "dense" / "last.ckpt"

    def error_for(name: str) -> str:
        return one_line_error(capsys, ["test", f"--data.data_dir={tiny_mnist}", f"--ckpt_path={in_tmp / name}"])

    def edited(name: str, edit) -> str:
        checkpoint = torch.load(good, weights_only=True)
        edit(checkpoint)
        torch.save(checkpoint, in_tmp / name)
        return name

    def hparams(**changes):
        return lambda checkpoint: checkpoint["hyper_parameters"].update(changes)

    (in_tmp / "notes.ckpt").write_text("not a checkpoint")
    (in_tmp / "half.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"weights": torch.zeros(3)}, in_tmp / "plain.ckpt")
    assert "notes.ckpt is not a readable checkpoint (" in error_for("notes.ckpt")
    assert "half.ckpt is not a readable checkpoint (" in error_for("half.ckpt")
    assert "plain.ckpt is not a Lightning checkpoint (it holds no state_dict)" in error_for("plain.ckpt")
    assert "is a folder; pass one of the .ckpt files in it" in error_for(".")

    # Saved by another class, by a class this version lacks, with settings it no longer takes, by no class.
    other = edited("other.ckpt", hparams(_class_path="torch.nn.Linear"))
    assert "other.ckpt was saved by torch.nn.Linear, which is not a digit classifier" in error_for(other)
    gone = edited("gone.ckpt", hparams(_class_path="digits_lightning.models.ResNet"))
    assert "gone.ckpt was saved by digits_lightning.models.ResNet, which does not exist" in error_for(gone)
    newer = edited("newer.ckpt", hparams(depth=3))
    assert "newer.ckpt was saved with settings DenseClassifier no longer takes (depth)" in error_for(newer)
    anonymous = edited("anonymous.ckpt", lambda checkpoint: checkpoint["hyper_parameters"].pop("_class_path"))
    assert "anonymous.ckpt does not say which model saved it" in error_for(anonymous)

    # Same class and settings, other weights: as from a version whose network differs.
    def other_network(checkpoint):
        weights = checkpoint["state_dict"]
        weights["net.1.weight"] = torch.zeros(128, 28 * 28 * 3)
        weights["net.5.weight"] = weights.pop("net.3.weight")

    line = error_for(edited("renamed.ckpt", other_network))
    assert "renamed.ckpt does not fit this DenseClassifier (missing net.3.weight; unexpected net.5.weight;" in line
    assert "other shapes: net.1.weight (128, 2352) vs (128, 784)" in line


def test_resume_with_other_settings_is_one_line(reference, tiny_mnist, in_tmp, capsys):
    # `fit --ckpt_path last` builds the model from the command line, here with 64 hidden units instead of 128.
    shutil.copytree(reference / "checkpoints", in_tmp / "checkpoints")
    line = one_line_error(capsys, fit_args(tiny_mnist, "--model.hidden=64", "--ckpt_path=last"))
    assert "last.ckpt does not fit this DenseClassifier (other shapes: net.1.weight (128, 784) vs (64, 784)" in line
    # More epochs than the saved one-cycle schedule covers (it would fail at its end, mid-training).
    line = one_line_error(capsys, fit_args(tiny_mnist, "--trainer.max_epochs=5", "--ckpt_path=last"))
    assert "last.ckpt was trained under a one-cycle schedule of 30 steps, but this run would take 50" in line
