"""`predict` on people's own files, end to end through the real CLI, with a model trained here on the
tiny data set: one row per file, failures as rows, outputs never overwritten, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from lightning.pytorch import Callback, Trainer

from digits_lightning.checkpoints import load_classifier
from digits_lightning.cli import main
from digits_lightning.data import MNISTDataModule
from digits_lightning.plots import SHEET_SIDE
from digits_lightning.prediction import ImageFiles, PredictThreads
from digits_lightning.preprocess import load_original
from tests.helpers import draw, mnist_convention, render_digits, train, transparent, write_idx

@pytest.fixture(scope="module")
def checkpoint(tiny_mnist, tmp_path_factory) -> Path:
    return train(tiny_mnist, tmp_path_factory.mktemp("trained"))


def predict(ckpt: Path | None, path: Path | str, *extra: str) -> None:
    main(
        [
            "predict",
            *([f"--ckpt_path={ckpt}"] if ckpt else []),
            f"--data.predict_path={path}",
            "--trainer.enable_progress_bar=false",
            *extra,
        ]
    )


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "digit", "label", "confidence", *(f"p{d}" for d in range(10)), "error"]
        return list(reader)


def files_under(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file()]


def assert_predicted(row: dict) -> None:
    probs = np.array([float(row[f"p{d}"]) for d in range(10)])
    assert row["error"] == ""
    assert abs(probs.sum() - 1) < 1e-4 and probs.min() >= 0
    assert int(row["digit"]) == int(probs.argmax()) and row["label"] == row["digit"]  # digits are named by themselves
    assert float(row["confidence"]) == pytest.approx(probs.max(), abs=1e-6)


def assert_failed(row: dict, kind: str) -> None:
    assert row["digit"] == row["confidence"] == "" and all(row[f"p{d}"] == "" for d in range(10))
    assert row["error"].startswith(f"{kind}: "), row["error"]


def assert_one_error_line(err: str, *words: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


def no_temporary_files(folder: Path) -> bool:
    return not list(folder.rglob(".*.tmp"))


def write_good_and_bad(folder: Path) -> dict[str, str]:
    """Digits (dark on light, several modes, nested folders) and files that cannot be digits;
    returns the kind of error expected for each bad file's path."""
    (folder / "scans" / "2024").mkdir(parents=True)
    draw("3").save(folder / "a-three.png")
    ImageOps.colorize(draw("7"), black=(30, 30, 120), white=(250, 245, 230)).save(folder / "scans" / "seven.jpg", quality=90)
    transparent(draw("1"), "RGBA").save(folder / "scans" / "2024" / "one.png")
    draw("0").convert("P").save(folder / "scans" / "2024" / "zero.gif")
    Image.fromarray((np.asarray(draw("4"), np.uint16) * 257)).save(folder / "scans" / "four-16bit.png")
    bad = {
        "corrupt.png": "not an image",
        "scans/cut.jpg": "damaged",
        "scans/2024/empty.png": "empty",
        "notes.txt": "not an image",
        "scans/blank.png": "blank",
    }
    (folder / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(3000))
    draw("5").convert("RGB").save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "scans" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "scans" / "2024" / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("3 7 1 0 4\n")
    Image.new("L", (120, 90), 255).save(folder / "scans" / "blank.png")
    return {str(folder / name): kind for name, kind in bad.items()}


def test_a_folder_gives_one_row_per_file_in_sorted_order(checkpoint, in_tmp, capsys):
    folder = in_tmp / "photos"
    bad = write_good_and_bad(folder)
    predict(checkpoint, folder, "--prediction.output=out.csv")  # no SystemExit: some were predicted
    rows = read_rows(in_tmp / "out.csv")
    assert [r["path"] for r in rows] == files_under(folder) and len(rows) == 10
    for row in rows:
        if row["path"] in bad:
            assert_failed(row, bad[row["path"]])
        else:
            assert_predicted(row)
    digits = {Path(r["path"]).name: r["digit"] for r in rows}
    truth = {"a-three.png": "3", "seven.jpg": "7", "one.png": "1", "zero.gif": "0", "four-16bit.png": "4"}
    assert sum(digits[name] == d for name, d in truth.items()) >= 4, digits  # the tiny model reads clean digits
    out = capsys.readouterr().out
    assert "Predicted 5 of 10 images" in out
    failed = re.search(r"^Failed: 5 \((.*)\); their rows say why", out, re.MULTILINE)
    assert failed and sorted(failed.group(1).split(", ")) == sorted(["2 not an image", "1 damaged", "1 empty", "1 blank"])
    assert "out.csv" in out
    assert no_temporary_files(in_tmp)


def test_links_pipes_and_vanished_files_get_a_row_each(checkpoint, in_tmp, capsys):
    """Every path a folder search turns up is accounted for: none is dropped silently, none hangs."""
    folder = in_tmp / "odd"
    folder.mkdir()
    draw("3").save(folder / "three.png")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "alias.png").symlink_to(folder / "three.png")
    os.mkfifo(folder / "pipe.png")  # opening it would wait for a writer for ever
    predict(checkpoint, folder, "--prediction.output=out.csv")
    rows = {Path(r["path"]).name: r for r in read_rows(in_tmp / "out.csv")}
    assert sorted(rows) == ["alias.png", "dangling.png", "pipe.png", "three.png"]
    assert rows["alias.png"]["digit"] == rows["three.png"]["digit"] != ""
    assert_failed(rows["dangling.png"], "unreadable")
    assert "symbolic link" in rows["dangling.png"]["error"] and "gone.png" in rows["dangling.png"]["error"]
    assert_failed(rows["pipe.png"], "unreadable")
    assert "Failed: 2 (2 unreadable)" in capsys.readouterr().out
    # A prediction is no training run: no run folder, no config.yaml beside the outputs.
    assert not (in_tmp / "lightning_logs").exists() and not (in_tmp / "config.yaml").exists()


def test_a_single_file_and_a_glob(checkpoint, in_tmp):
    folder = in_tmp / "mixed"
    folder.mkdir()
    for name, text in (("b.png", "2"), ("a.png", "6"), ("c.jpg", "8")):
        draw(text).convert("RGB").save(folder / name)
    (folder / "readme.txt").write_text("not a digit")
    predict(checkpoint, folder / "c.jpg", "--prediction.output=one.csv")
    (row,) = read_rows(in_tmp / "one.csv")
    assert row["path"] == str(folder / "c.jpg")
    assert_predicted(row)
    predict(checkpoint, f"{folder}/*.png", "--prediction.output=glob.csv")  # as quoted on a shell: the CLI expands it
    rows = read_rows(in_tmp / "glob.csv")
    assert [r["path"] for r in rows] == [str(folder / "a.png"), str(folder / "b.png")]
    for row in rows:
        assert_predicted(row)


def test_output_keeps_the_name_given(checkpoint, in_tmp):
    draw("4").save(in_tmp / "four.png")
    predict(checkpoint, in_tmp / "four.png", "--prediction.output=results.v2.txt", "--prediction.jsonl=true")
    (row,) = read_rows(in_tmp / "results.v2.txt")
    assert_predicted(row)
    assert (in_tmp / "results.v2.jsonl").is_file()


def test_hidden_files_are_passed_over(checkpoint, in_tmp):
    folder = in_tmp / "desk"
    (folder / ".thumbnails").mkdir(parents=True)
    draw("9").save(folder / "nine.png")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    draw("9").save(folder / ".thumbnails" / "nine.png")
    assert ImageFiles(str(folder)).hidden == 2
    predict(checkpoint, folder, "--prediction.output=out.csv")
    (row,) = read_rows(in_tmp / "out.csv")
    assert row["path"] == str(folder / "nine.png")
    assert_predicted(row)


def test_json_lines_and_contact_sheet(checkpoint, in_tmp, capsys):
    folder = in_tmp / "photos"
    write_good_and_bad(folder)
    predict(checkpoint, folder, "--prediction.output=out.csv", "--prediction.jsonl=true", "--prediction.sheet=true")
    rows = read_rows(in_tmp / "out.csv")
    lines = [json.loads(line) for line in (in_tmp / "out.jsonl").read_text().splitlines()]
    assert [line["path"] for line in lines] == [r["path"] for r in rows]
    for line, row in zip(lines, rows):
        assert line["error"] == row["error"]
        if row["error"]:
            assert line["digit"] is line["confidence"] is line["probs"] is None
        else:
            assert line["digit"] == int(row["digit"]) and len(line["probs"]) == 10
            assert line["confidence"] == pytest.approx(float(row["confidence"]), abs=1e-6)
            assert np.allclose(line["probs"], [float(row[f"p{d}"]) for d in range(10)], atol=1e-6)
    with Image.open(in_tmp / "out.png") as sheet:
        assert sheet.format == "PNG" and min(sheet.size) > 100
        colours = sheet.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colours) > 10  # drawn, not an empty canvas
    out = capsys.readouterr().out
    assert "out.jsonl" in out and "out.png" in out
    assert no_temporary_files(in_tmp)


def test_contact_sheet_shows_colour_files_in_colour_at_its_own_size(in_tmp):
    big = ImageOps.colorize(draw("7", size=600), black=(200, 20, 20), white=(255, 255, 255))
    big.save(in_tmp / "red.jpg", quality=90)  # a JPEG, which the digit path decodes straight to gray
    thumb = load_original(str(in_tmp / "red.jpg"), SHEET_SIDE)
    assert max(thumb.shape[:2]) == SHEET_SIDE  # shrunk once, to the sheet's size
    ink = thumb[..., 1] < 128  # dark in green: the red strokes
    assert ink.any() and thumb[ink, 0].mean() > 150  # still red, not gray


def test_decoding_workers_match_the_batches(in_tmp):
    folder = in_tmp / "digits"
    folder.mkdir()
    for i in range(5):
        draw(str(i)).save(folder / f"{i}.png")
    assert ImageFiles(str(folder)).loader(batch_size=8, workers=2).num_workers == 0  # one batch: no worker
    assert ImageFiles(str(folder)).loader(batch_size=2, workers=2).num_workers == 2
    assert ImageFiles(str(folder)).loader(batch_size=4, workers=3).num_workers == 2  # two batches, two workers


class Failing(Callback):
    """Records the threads the model runs with; fails the run at its first batch if asked."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.threads = fail, []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.threads.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("stop here")


@pytest.mark.parametrize("fail", [False, True], ids=["finished", "failed"])
def test_model_threads_leave_the_workers_a_core_and_come_back(checkpoint, in_tmp, fail):
    folder = in_tmp / "digits"
    folder.mkdir()
    for i in range(5):
        draw(str(i)).save(folder / f"{i}.png")
    model = load_classifier(checkpoint)
    spy = Failing(fail)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[PredictThreads(), spy])
    threads = torch.get_num_threads()
    dm = MNISTDataModule(predict_path=str(folder), predict_batch_size=4, predict_workers=1)
    if fail:
        with pytest.raises(RuntimeError, match="stop here"):
            trainer.predict(model, datamodule=dm, return_predictions=False)
    else:
        trainer.predict(model, datamodule=dm, return_predictions=False)
    assert spy.threads[0] == max(1, len(os.sched_getaffinity(0)) - 1)
    assert torch.get_num_threads() == threads  # given back, even after a failure


def test_predict_results_name_their_files_without_the_pixels(checkpoint, in_tmp):
    folder = in_tmp / "digits"
    folder.mkdir()
    draw("3").save(folder / "three.png")
    (folder / "notes.txt").write_text("not a digit")
    model = load_classifier(checkpoint)
    dm = MNISTDataModule(predict_path=str(folder), predict_workers=0)
    (batch,) = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(model, datamodule=dm)
    assert set(batch) == {"path", "error", "probs"}
    assert batch["path"] == [str(folder / "notes.txt"), str(folder / "three.png")]
    assert batch["error"][0].startswith("not an image:") and batch["error"][1] == ""
    assert tuple(batch["probs"].shape) == (2, 10)


def test_outputs_are_never_overwritten_unless_asked(checkpoint, in_tmp, capsys):
    draw("2").save(in_tmp / "two.png")
    predict(checkpoint, in_tmp / "two.png")
    first = (in_tmp / "predictions.csv").read_bytes()
    predict(checkpoint, in_tmp / "two.png")
    assert (in_tmp / "predictions.csv").read_bytes() == first
    assert read_rows(in_tmp / "predictions-2.csv")[0]["path"] == str(in_tmp / "two.png")
    assert "predictions-2.csv" in capsys.readouterr().out

    (in_tmp / "mine.csv").write_text("my own notes\n")
    with pytest.raises(SystemExit) as exit_:
        predict(checkpoint, in_tmp / "two.png", "--prediction.output=mine.csv")
    assert exit_.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "mine.csv", "--prediction.overwrite")
    assert (in_tmp / "mine.csv").read_text() == "my own notes\n"

    # The JSON Lines file counts too: only the CSV is free here.
    (in_tmp / "other.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit) as exit_:
        predict(checkpoint, in_tmp / "two.png", "--prediction.output=other.csv", "--prediction.jsonl=true")
    assert exit_.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "other.jsonl")
    assert not (in_tmp / "other.csv").exists() and (in_tmp / "other.jsonl").read_text() == "{}\n"

    predict(checkpoint, in_tmp / "two.png", "--prediction.output=mine.csv", "--prediction.overwrite=true")
    assert read_rows(in_tmp / "mine.csv")[0]["path"] == str(in_tmp / "two.png")
    assert no_temporary_files(in_tmp)


def test_only_bad_files_exit_3_and_still_write_their_rows(checkpoint, in_tmp, capsys):
    folder = in_tmp / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.txt").write_text("hello")
    with pytest.raises(SystemExit) as exit_:
        predict(checkpoint, folder, "--prediction.output=out.csv")
    assert exit_.value.code == 3  # not 1, which a crash gives
    assert_one_error_line(capsys.readouterr().err, "none of the 2 images", "out.csv")
    rows = read_rows(in_tmp / "out.csv")
    assert_failed(rows[0], "empty")
    assert_failed(rows[1], "not an image")
    assert no_temporary_files(in_tmp)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nowhere", ["nowhere", "no such file or folder"]),
        ("empty-folder", ["empty-folder", "holds no files"]),
        ("only-hidden", ["only-hidden", "holds no files", "1 hidden"]),
        ("empty-folder/*.png", ["empty-folder/*.png", "matches no files"]),
    ],
)
def test_nothing_to_read_is_exit_2_naming_the_path(checkpoint, in_tmp, capsys, spec, words):
    (in_tmp / "empty-folder").mkdir()
    (in_tmp / "only-hidden").mkdir()
    (in_tmp / "only-hidden" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(SystemExit) as exit_:
        predict(checkpoint, spec)
    assert exit_.value.code == 2
    assert_one_error_line(capsys.readouterr().err, *words)
    assert not list(in_tmp.glob("predictions*")) and no_temporary_files(in_tmp)


def test_missing_checkpoint_is_exit_2(in_tmp, capsys):
    draw("2").save(in_tmp / "two.png")
    with pytest.raises(SystemExit) as exit_:
        predict(in_tmp / "missing.ckpt", in_tmp / "two.png")
    assert exit_.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "missing.ckpt")


def test_without_ckpt_path_it_asks_to_train_first(in_tmp, capsys):
    draw("2").save(in_tmp / "two.png")
    with pytest.raises(SystemExit) as exit_:
        predict(None, in_tmp / "two.png")
    assert exit_.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "checkpoints/cnn", "train one first", "--ckpt_path")


def test_without_ckpt_path_the_newest_best_checkpoint_is_used(checkpoint, in_tmp, capsys, caplog):
    folder = in_tmp / "checkpoints" / "cnn"
    folder.mkdir(parents=True)
    older, newer = folder / "epoch=00-val_acc=0.5000.ckpt", folder / "epoch=02-val_acc=0.9000.ckpt"
    (folder / "last.ckpt").write_bytes(b"not a checkpoint: it must not be read")
    shutil.copy(checkpoint, newer)
    older.write_bytes(b"not a checkpoint either: too old to be chosen")
    stamp = newer.stat().st_mtime
    for path, age in ((older, 60), (folder / "last.ckpt", -60)):  # last.ckpt is newer, but not a best one
        os.utime(path, (stamp - age, stamp - age))
    draw("2").save(in_tmp / "two.png")
    with caplog.at_level("INFO"):
        predict(None, in_tmp / "two.png")
    said = capsys.readouterr()
    assert f"Using checkpoint {Path('checkpoints') / 'cnn' / newer.name}" in said.out + said.err + caplog.text
    assert_predicted(read_rows(in_tmp / "predictions.csv")[0])


# -- agreement with the model on MNIST's own tensors ----------------------------------------------


@pytest.fixture(scope="module")
def convention_model(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A model trained on tiny digits in MNIST's convention (20x20 box, centre of mass in the middle),
    and 300 test digits in that convention, as uint8 [300, 28, 28].

    The tiny set itself is not in that convention (its digits are 11-17 pixels tall, off-centre by up
    to 2): `predict` puts every file into MNIST's convention, so it can agree with the model on
    the 28x28 tensors only where those follow the convention too, as MNIST's do."""
    root = tmp_path_factory.mktemp("convention")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 1200, 1), ("t10k", 300, 2)):
        images, labels = render_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.stack([mnist_convention(d) for d in images]))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    test = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 28, 28)
    return train(root, tmp_path_factory.mktemp("convention-trained")), test


def as_users_file(digit: np.ndarray, index: int, folder: Path, rng: np.random.Generator) -> None:
    """MNIST's white-on-black 28x28 as a person's file: 3x larger, dark ink on white, off-centre on
    a larger page; grayscale PNG, RGB PNG, RGBA PNG with a transparent page, or JPEG."""
    big = Image.fromarray(255 - digit).resize((84, 84), Image.Resampling.BICUBIC)
    page = Image.new("L", (84 + 70, 84 + 50), 255)
    page.paste(big, (int(rng.integers(0, 71)), int(rng.integers(0, 51))))
    name = folder / f"{index:03d}"
    kind = index % 4
    if kind == 0:
        page.save(name.with_suffix(".png"))
    elif kind == 1:
        page.convert("RGB").save(name.with_suffix(".png"))
    elif kind == 2:
        rgba = Image.new("RGBA", page.size, (0, 0, 0, 0))
        rgba.putalpha(ImageOps.invert(page))  # black ink, as opaque as it is dark; the page transparent
        rgba.save(name.with_suffix(".png"))
    else:
        page.convert("RGB").save(name.with_suffix(".jpg"), quality=95)


def test_users_files_agree_with_the_model_on_mnist_tensors(convention_model, in_tmp):
    ckpt, digits = convention_model
    folder = in_tmp / "users"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, digit in enumerate(digits):
        as_users_file(digit, i, folder, rng)
    predict(ckpt, folder, "--prediction.output=out.csv")
    rows = read_rows(in_tmp / "out.csv")
    assert len(rows) == len(digits) and all(r["error"] == "" for r in rows)
    from_files = np.array([[float(r[f"p{d}"]) for d in range(10)] for r in rows])

    model = load_classifier(ckpt)  # takes [0, 1] images, whatever it was trained with
    with torch.no_grad():
        from_tensors = model(torch.from_numpy(digits.copy()).unsqueeze(1) / 255).softmax(dim=1).numpy()
    agree = (from_files.argmax(1) == from_tensors.argmax(1)).mean()
    print(f"agreement: {agree:.1%}")
    assert agree >= 0.99, f"{agree:.1%} agree; rows {np.nonzero(from_files.argmax(1) != from_tensors.argmax(1))[0]}"


# -- fuzz: no file makes a worker raise or hang ---------------------------------------------------


def seeds() -> dict[str, bytes]:
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        image = draw("5", size=48)
        (image.convert("RGB") if fmt == "JPEG" else image).save(buffer, fmt)
        out[fmt] = buffer.getvalue()
    return out


SEEDS = seeds()


@st.composite
def damaged_files(draw_: st.DrawFn) -> bytes:
    if draw_(st.booleans()):
        return draw_(st.binary(max_size=2000))
    data = bytearray(SEEDS[draw_(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw_(st.integers(1, 4))):
        if not data:
            break
        op = draw_(st.sampled_from(["flip", "truncate", "duplicate", "insert"]))
        at = draw_(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[at] ^= draw_(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            end = draw_(st.integers(at, min(len(data), at + 200)))
            data[at:at] = data[at:end]
        else:
            data[at:at] = draw_(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def on_alarm(signum, frame):
    raise TimeoutError("decoding one small file took more than 10 s")


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=damaged_files())
def test_any_bytes_give_a_row_never_an_exception(fuzz_dir, data):
    path = fuzz_dir / "file.img"
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    try:
        item = ImageFiles(str(path))[0]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    event(item["error"].split(":")[0] or "predicted")  # pytest --hypothesis-show-statistics
    assert item["path"] == str(path)
    assert isinstance(item["error"], str)
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (28, 28)
    if item["error"]:
        assert not item["error"].startswith("failed:"), item["error"]  # an error the code did not foresee
        assert item["image"].sum() == 0
