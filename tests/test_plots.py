"""The pictures and the TensorBoard data of a real tiny `fit` then `test`, read back with TensorBoard's
own reader and served by a real `tensorboard`; the PNGs opened with Pillow."""

from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from digits_lightning import plots
from digits_lightning.cli import main

PICTURES = ("samples", "learning_curves", "confusion_matrix", "misclassified")
HP_METRICS = {"hp/val_acc", "hp/val_loss", "hp/test_acc", "hp/test_loss"}
EPOCH_METRICS = {"train_acc", "train_loss", "val_acc", "val_loss"}
DATA = ["--data.val_size=200", "--data.batch_size=100"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def run(tiny_mnist, tmp_path_factory):
    """`fit` (2 epochs, then the test of the best checkpoint) and a separate `test` of that checkpoint."""
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        with redirect_stdout(io.StringIO()) as fit_out:  # capsys is per test; this run is shared
            main(["fit", "--model=DenseClassifier", f"--data.data_dir={tiny_mnist}", *DATA, "--trainer.max_epochs=2", *QUIET])
        (best,) = (root / "checkpoints" / "dense").glob("epoch=*.ckpt")
        with redirect_stdout(io.StringIO()) as test_out:
            main(["test", f"--data.data_dir={tiny_mnist}", f"--ckpt_path={best}", *QUIET])
    logs = root / "lightning_logs" / "dense"
    return {"root": root, "fit": logs / "version_0", "test": logs / "version_1", "fit_out": fit_out.getvalue(), "test_out": test_out.getvalue()}


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(acc: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in acc.PluginTagToContent("hparams").items()}


def _last(acc: EventAccumulator, tag: str) -> float:
    return max(acc.Scalars(tag), key=lambda e: e.step).value


def _assert_picture(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size, (path, image.size)
        pixels = np.asarray(image.convert("RGB"))
    grey = pixels.mean(axis=2)
    assert grey.std() > 20, f"{path} is nearly blank"
    colours = np.unique(pixels.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32))
    assert len(colours) > 30, f"{path} has hardly any colours"
    assert path.stat().st_size < 200_000
    return pixels


def _size(fig) -> tuple[int, int]:
    """What `render` promises: width and height in pixels are the figure's inches times its DPI."""
    width, height = fig.get_size_inches() * fig.dpi
    return round(width), round(height)


def _grid_size(images: int) -> tuple[int, int]:
    """The size of a grid of `images` digits: each row of 8 adds height, the width stays."""
    return _size(plots.sample_grid(np.zeros((images, 28, 28)), ["0"] * images))


def _mistakes_size(shown: int) -> tuple[int, int]:
    return _size(plots.misclassified_grid(np.zeros((shown, 28, 28)), ["1"] * shown, ["7"] * shown, [0.5] * shown, 300, shown))


SAMPLES_SIZE = _grid_size(32)


def _expected_sizes(test_acc: float, images: int = 300) -> dict[str, tuple[int, int]]:
    shown = min(24, round((1 - test_acc) * images))  # the grid shows up to 24 mistakes
    return {
        "samples": SAMPLES_SIZE,
        "learning_curves": _size(plots.learning_curves([{"val_acc": 0.5}])),
        "confusion_matrix": _size(plots.confusion_matrix(np.eye(10, dtype=int))),
        "misclassified": _mistakes_size(shown),
    }


def test_grids_grow_a_row_per_eight_images_and_keep_their_width():
    sizes = [_grid_size(n) for n in (1, 8, 9, 16, 17, 32)]
    assert len({w for w, _ in sizes}) == 1
    heights = [h for _, h in sizes]
    assert heights[0] == heights[1] < heights[2] == heights[3] < heights[4] < heights[5]


# -- the figures on their own ---------------------------------------------------------------------


def test_figures_render_at_their_size_and_save_atomically(tmp_path):
    rng = np.random.default_rng(0)
    history = [{"train_acc": 0.8, "val_acc": 0.9, "train_loss": 0.6, "val_loss": 0.3}, {"train_acc": 0.95, "train_loss": 0.2}]
    counts = np.diag(rng.integers(20, 40, 10)) + rng.integers(0, 3, (10, 10)) * (1 - np.eye(10, dtype=int))
    figures = {
        "samples": plots.sample_grid(rng.random((10, 1, 28, 28)), list("0123456789")),
        "curves": plots.learning_curves(history),  # epoch 2 without validation
        "confusion": plots.confusion_matrix(counts),
        "mistakes": plots.misclassified_grid(rng.random((3, 28, 28)), [1, 2, 3], [7, 5, 8], [0.9, 0.8, 0.7], 100, 3),
        "none": plots.misclassified_grid(np.zeros((0, 28, 28)), [], [], [], 100, 0),
    }
    for name, fig in figures.items():
        width, height = _size(fig)
        rgb = plots.render(fig)
        assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8, name
        path = plots.save_png(rgb, tmp_path / "out" / f"{name}.png")
        assert np.array_equal(_assert_picture(path, (width, height)), rgb), name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.png" for n in figures)  # no temp files left
    assert plots.best_epoch(history) == 0 and plots.best_epoch([{"train_acc": 0.5}]) is None


def test_learning_curves_number_epochs_as_logged_and_star_the_best():
    resumed = [{"epoch": 4, "val_acc": 0.9, "val_loss": 0.3}, {"epoch": 5, "val_acc": 0.95, "val_loss": 0.2}]
    acc_ax, loss_ax = plots.learning_curves(resumed).axes
    assert acc_ax.get_xlim() == (3.5, 5.5)
    labels = acc_ax.get_legend_handles_labels()[1] + loss_ax.get_legend_handles_labels()[1]
    assert "best epoch (5): 95.00%" in labels and "best epoch (5): 0.2000" in labels


def test_a_failed_write_leaves_the_old_png_and_no_temp_file(tmp_path):
    path = plots.save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
    with pytest.raises((TypeError, ValueError)):
        plots.save_png(np.zeros((4, 4, 3), np.complex64), path)  # Pillow cannot encode it
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    with Image.open(path) as image:
        assert image.size == (4, 4)


# -- a real fit then test through the CLI ---------------------------------------------------------


def test_fit_and_test_print_where_each_picture_landed(run):
    for out, folder, names in ((run["fit_out"], run["fit"], PICTURES), (run["test_out"], run["test"], PICTURES[2:])):
        printed = {line.split(":", 1)[1].strip() for line in out.splitlines() if line.endswith(".png")}
        assert printed == {str(Path(folder.relative_to(run["root"])) / f"{name}.png") for name in names}
        assert "tensorboard --logdir lightning_logs" in out
    assert "Training samples:" in run["fit_out"] and "Worst mistakes:" in run["fit_out"]
    assert not list(run["test"].glob("samples.png")) and not list(run["test"].glob("learning_curves.png"))


def test_pngs_open_at_the_expected_size_and_match_the_tensorboard_images(run):
    acc = _events(run["fit"])
    test_acc = _last(acc, "test_acc")
    for name, size in _expected_sizes(test_acc).items():
        pixels = _assert_picture(run["fit"] / f"{name}.png", size)
        (event,) = acc.Images(name)
        assert (event.width, event.height) == size
        with Image.open(io.BytesIO(event.encoded_image_string)) as logged:
            assert np.array_equal(np.asarray(logged.convert("RGB")), pixels), name
    # The grid of the test's mistakes has as many digits as the model got wrong (up to 24).
    for name in PICTURES[2:]:
        _assert_picture(run["test"] / f"{name}.png", _expected_sizes(_last(_events(run["test"]), "test_acc"))[name])


def test_event_files_hold_the_curves_the_images_and_the_hparams(run):
    acc = _events(run["fit"])
    tags = acc.Tags()
    assert EPOCH_METRICS | {"test_acc", "test_loss"} | HP_METRICS <= set(tags["scalars"])
    assert set(tags["images"]) == set(PICTURES)
    for tag in EPOCH_METRICS:
        assert len(acc.Scalars(tag)) == 2, tag  # one value per epoch
    # The HPARAMS tab: the run's hyperparameters and the four metric tags ...
    hp = _hparams(acc)
    assert {m.name.tag for m in hp["_hparams_/experiment"].experiment.metric_infos} == HP_METRICS
    session = hp["_hparams_/session_start_info"].session_start_info.hparams
    assert session["model"].string_value == "DenseClassifier"
    assert (session["hidden"].number_value, session["max_epochs"].number_value) == (128, 2)
    assert (session["batch_size"].number_value, session["normalize"].string_value) == (100, "unit")  # the dense default
    assert session["augment"].string_value.startswith("Augment(p=0.5,") and "_class_path" not in session  # the CLI default
    # ... whose latest values are the best epoch's validation and the test of its checkpoint.
    val = {e.step: e.value for e in acc.Scalars("val_acc")}
    best_step = max(val, key=val.get)
    assert _last(acc, "hp/val_acc") == pytest.approx(val[best_step])
    assert _last(acc, "hp/val_loss") == pytest.approx({e.step: e.value for e in acc.Scalars("val_loss")}[best_step])
    assert _last(acc, "hp/test_acc") == pytest.approx(_last(acc, "test_acc"))
    assert f"Test accuracy: {100 * _last(acc, 'hp/test_acc'):.2f}%" in run["fit_out"]


def test_a_test_on_its_own_gets_its_hparams_row(run):
    acc = _events(run["test"])
    assert set(acc.Tags()["images"]) == {"confusion_matrix", "misclassified"}
    session = _hparams(acc)["_hparams_/session_start_info"].session_start_info.hparams
    assert session["model"].string_value == "DenseClassifier" and math.isnan(session["max_epochs"].number_value)
    # TensorBoard takes the HPARAMS columns from any one run: a test declares what a fit does.
    fit_session = _hparams(_events(run["fit"]))["_hparams_/session_start_info"].session_start_info.hparams
    assert set(session) == set(fit_session)
    assert _last(acc, "hp/test_acc") == pytest.approx(_last(_events(run["fit"]), "hp/test_acc"))
    assert math.isnan(_last(acc, "hp/val_acc"))  # a test does not validate


def test_a_real_tensorboard_serves_the_run(run):
    executable = Path(sys.executable).parent / "tensorboard"
    if not executable.exists():
        pytest.skip(f"no tensorboard executable next to the Python interpreter ({executable})")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(executable), "--logdir", str(run["root"] / "lightning_logs"), "--host", "127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline, scalars, error = time.monotonic() + 60, {}, None
        while time.monotonic() < deadline and set(scalars.get("dense/version_0", ())) < EPOCH_METRICS | HP_METRICS:
            assert server.poll() is None, f"tensorboard exited: {server.stderr.read().decode()[-2000:]}"
            try:
                scalars = _get(f"{url}/scalars/tags")
            except OSError as err:  # not listening yet
                error = err
            time.sleep(0.5)
        assert EPOCH_METRICS | {"test_acc"} | HP_METRICS <= set(scalars.get("dense/version_0", ())), (scalars, error)
        assert set(_get(f"{url}/images/tags")["dense/version_0"]) == set(PICTURES)
        groups = _post(f"{url}/hparams/session_groups", _SESSION_GROUPS)["sessionGroups"]
        by_run = {g["name"]: {m["name"]["tag"]: m["value"] for m in g["metricValues"]} for g in groups}
        acc = _events(run["fit"])
        assert by_run["dense/version_0"]["hp/test_acc"] == pytest.approx(_last(acc, "test_acc"))
        assert by_run["dense/version_1"]["hp/test_acc"] == pytest.approx(_last(acc, "test_acc"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


_SESSION_GROUPS = {
    "experimentName": "",
    "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING", "STATUS_FAILURE"],
    "colParams": [{"metric": {"tag": "hp/test_acc", "group": ""}, "order": "ORDER_DESC"}],
    "startIndex": 0,
    "sliceSize": 10,
}


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _post(url: str, body: dict):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


# -- the samples command and other loggers ------------------------------------------------------------


def test_samples_command_writes_the_grid_fit_logged(run, tiny_mnist, tmp_path, capsys):
    out = tmp_path / "pictures" / "grid.png"
    main(["samples", f"--data.data_dir={tiny_mnist}", *DATA, f"--out={out}"])
    assert capsys.readouterr().out.strip() == f"Training samples: {out}"
    pixels = _assert_picture(out, SAMPLES_SIZE)
    with Image.open(run["fit"] / "samples.png") as logged:
        assert np.array_equal(np.asarray(logged.convert("RGB")), pixels)  # the same first 32 training images


def test_samples_command_does_not_overwrite_unless_asked(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"the user's own file")
    with pytest.raises(SystemExit) as exit_:
        main(["samples", f"--data.data_dir={tiny_mnist}", *DATA, f"--out={out}"])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's own file"
    main(["samples", f"--data.data_dir={tiny_mnist}", *DATA, f"--out={out}", "--overwrite=true"])
    _assert_picture(out, SAMPLES_SIZE)


def test_samples_command_with_augmentation_and_a_count(tiny_mnist, tmp_path):
    out = tmp_path / "aug.png"
    main(["samples", f"--data.data_dir={tiny_mnist}", *DATA, "--data.augment.p=1", "--count=8", f"--out={out}"])
    _assert_picture(out, _grid_size(8))  # one row


def test_samples_command_reports_missing_data_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["samples", f"--data.data_dir={tmp_path / 'nowhere'}", "--data.download=false"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST is not complete in") and "Traceback" not in err


@pytest.mark.parametrize("logger", ["false", "lightning.pytorch.loggers.CSVLogger"])
def test_without_tensorboard_pictures_go_to_the_logger_folder_or_nowhere(tiny_mnist, in_tmp, capsys, logger):
    extra = [f"--trainer.logger={logger}"] + (["--trainer.logger.save_dir=csv_logs"] if logger != "false" else [])
    main(["fit", "--model=DenseClassifier", f"--data.data_dir={tiny_mnist}", *DATA, "--trainer.max_epochs=1", *QUIET, *extra])
    out = capsys.readouterr().out
    pngs = sorted(p.relative_to(in_tmp) for p in in_tmp.rglob("*.png"))
    assert "Test accuracy:" in out and "TensorBoard:" not in out
    if logger == "false":
        assert pngs == [] and ".png" not in out
    else:
        assert [p.name for p in pngs] == sorted(f"{name}.png" for name in PICTURES)
        assert all(str(p) in out for p in pngs) and not list(in_tmp.rglob("events.out.tfevents.*"))


def test_learning_curves_hold_each_epochs_own_metrics(tiny_mnist, tmp_path):
    """The module logs training metrics after the callbacks' `on_train_epoch_end`: no epoch may be
    drawn with the previous epoch's figures."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from digits_lightning.callbacks import TrainingPictures
    from digits_lightning.data import MNISTDataModule
    from digits_lightning.models import DenseClassifier

    pictures = TrainingPictures()
    logger = TensorBoardLogger(tmp_path, name="", default_hp_metric=False)
    trainer = Trainer(max_epochs=3, logger=logger, callbacks=[pictures], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DenseClassifier(), datamodule=MNISTDataModule(str(tiny_mnist), val_size=200, batch_size=100))
    acc = _events(Path(logger.log_dir))
    for tag in EPOCH_METRICS:
        logged = [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]
        assert [epoch[tag] for epoch in pictures.history] == pytest.approx(logged), tag
    assert [epoch["epoch"] for epoch in pictures.history] == [1, 2, 3]


@pytest.mark.parametrize(("shown", "total", "title"), [(1, 1, "1 image"), (3, 3, "all 3 images"), (2, 5, "the first 2 of 5 images")])
def test_contact_sheet_title_counts_the_images(shown, total, title):
    digit = np.zeros((28, 28), np.float32)
    rows = [(f"{i}.png", np.full((40, 30, 3), 200, np.uint8), digit, 3, 0.9, "") for i in range(shown)]
    fig = plots.prediction_sheet(rows, total)
    assert fig._suptitle.get_text() == f"Predictions ({title}): as given | as the model saw it"
    assert plots.render(fig).shape[2] == 3


def test_a_picture_goes_into_tensorboard_as_the_same_png_as_its_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from digits_lightning.callbacks import _log_png

    rgb = plots.render(plots.sample_grid(np.random.default_rng(0).random((8, 28, 28)), list("01234567")))
    png = plots.encode_png(rgb)
    writer = SummaryWriter(str(tmp_path))
    _log_png(writer, "open", rgb, png, 3)
    writer.close()  # a closed writer has no file writer: the pixels go through add_image instead
    _log_png(writer, "closed", rgb, png, 4)
    writer.close()
    acc = _events(tmp_path)
    (opened,), (closed,) = acc.Images("open"), acc.Images("closed")
    assert opened.encoded_image_string == png and (opened.width, opened.height, opened.step) == (rgb.shape[1], rgb.shape[0], 3)
    for event in (opened, closed):
        with Image.open(io.BytesIO(event.encoded_image_string)) as logged:
            assert np.array_equal(np.asarray(logged.convert("RGB")), rgb)
