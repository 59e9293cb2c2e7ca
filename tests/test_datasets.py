"""Other symbol sets (`--data.dataset`): Fashion-MNIST, KMNIST and EMNIST through torchvision's own
classes and real parsing, on tiny archives written here in each set's own format and layout
(EMNIST: one `gzip.zip` holding `gzip/emnist-<split>-<part>-ubyte.gz`, images stored transposed;
letters labelled 1-26), and Debian's re-compressed Fashion-MNIST where it is installed."""

from __future__ import annotations

import csv
import gzip
import hashlib
import string
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.datasets import EMNIST, KMNIST, FashionMNIST

from digits_lightning import archives
from digits_lightning.archives import ArchiveFolder, DataError
from digits_lightning.checkpoints import load_classifier
from digits_lightning.cli import main
from digits_lightning.conventions import apply
from digits_lightning.data import DigitsDataModule, MNISTDataModule
from digits_lightning.datasets import SYMBOL_SETS
from tests.helpers import FIT

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX file `tests.helpers.write_idx` writes, as bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def render(chars: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` upright 28x28 glyphs (white on black, Pillow's font, random size and position) of `chars`,
    with their indices into `chars`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(chars), n)
    fonts = {size: ImageFont.load_default(size=size) for size in range(16, 23)}
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        canvas = Image.new("L", (28, 28))
        centre = (14 + rng.integers(-2, 3), 14 + rng.integers(-2, 3))
        ImageDraw.Draw(canvas).text(centre, chars[label], fill=255, font=fonts[int(rng.integers(16, 23))], anchor="mm")
        images[i] = np.asarray(canvas)
    return images, labels


def write_four_archives(folder: Path, chars: str, level: int = 9, n_train: int = 600, n_test: int = 200) -> dict:
    """MNIST's four archive names (as Fashion-MNIST and KMNIST use them) directly in `folder`; returns
    the archives' MD5s, the extracted files' sizes and MD5s, and the images."""
    folder.mkdir(parents=True, exist_ok=True)
    md5s, extracted, sets = {}, {}, {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = render(chars, n, seed)
        sets[prefix] = images, labels
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            extracted[name] = (len(data), hashlib.md5(data).hexdigest())
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=level, mtime=0))
            md5s[f"{name}.gz"] = hashlib.md5((folder / f"{name}.gz").read_bytes()).hexdigest()
    return {"md5s": md5s, "extracted": extracted, "sets": sets}


def write_emnist_zip(folder: Path, split: str, chars: str, offset: int, n_train: int = 600, n_test: int = 200) -> dict:
    """EMNIST's `gzip.zip` as NIST ships it: `gzip/emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte.gz`,
    the images stored transposed, the labels `offset` + class index. Returns the zip's MD5 and the
    upright images with their class indices."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    with zipfile.ZipFile(folder / "gzip.zip", "w") as z:
        for part, n, seed in (("train", n_train, 3), ("test", n_test, 4)):
            images, labels = render(chars, n, seed)
            sets[part] = images, labels
            stored = images.transpose(0, 2, 1)  # EMNIST's storage
            z.writestr(f"gzip/emnist-{split}-{part}-images-idx3-ubyte.gz", gzip.compress(idx_bytes(stored), mtime=0))
            z.writestr(f"gzip/emnist-{split}-{part}-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels + offset), mtime=0))
            if split != "mnist":  # another split beside it, which must stay packed
                z.writestr(f"gzip/emnist-mnist-{part}-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels), mtime=0))
    return {"md5": hashlib.md5((folder / "gzip.zip").read_bytes()).hexdigest(), "sets": sets}


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- Fashion-MNIST ---------------------------------------------------------------------------------


@pytest.fixture
def fashion_official(tmp_path, monkeypatch) -> dict:
    """Tiny 'official' Fashion-MNIST: torchvision's archive MD5s and our extracted sizes/MD5s made the
    tiny set's, as the real ones are the real set's."""
    written = write_four_archives(tmp_path / "official", "0123456789", level=9)
    monkeypatch.setattr(FashionMNIST, "resources", [(n, written["md5s"][n]) for n, _ in FashionMNIST.resources])
    monkeypatch.setattr(archives, "FASHION_EXTRACTED", written["extracted"])
    return written


def test_fashion_official_archives_load_upright_with_their_names(fashion_official, tmp_path):
    folder = ArchiveFolder(tmp_path / "official", tmp_path / "cache", download=False, symbols=SYMBOL_SETS["fashion"])
    folder.prepare()
    images, labels = folder.load(train=True)
    assert folder.raw_dir == tmp_path / "cache" / "FashionMNIST" / "raw"  # torchvision's folder for its class
    assert torch.equal(images, torch.from_numpy(fashion_official["sets"]["train"][0]))
    assert torch.equal(labels, torch.from_numpy(fashion_official["sets"]["train"][1]).long())
    assert SYMBOL_SETS["fashion"].class_names[7] == "Sneaker"


def test_recompressed_fashion_archives_are_accepted_for_their_contents(fashion_official, tmp_path):
    """Debian's case: other `.gz` bytes (another compression level), the official files inside."""
    debian = tmp_path / "debian"
    again = write_four_archives(debian, "0123456789", level=1)
    assert again["md5s"] != fashion_official["md5s"] and again["extracted"] == fashion_official["extracted"]
    (debian).chmod(0o555)
    before = tree(debian)
    folder = ArchiveFolder(debian, tmp_path / "cache", download=True, symbols=SYMBOL_SETS["fashion"])
    folder.prepare()  # download on, and still no download: nothing is fetched over a proven archive
    images, _ = folder.load(train=False)
    assert torch.equal(images, torch.from_numpy(fashion_official["sets"]["t10k"][0]))
    assert tree(debian) == before  # never written into


def test_a_damaged_recompressed_fashion_archive_is_refused(fashion_official, tmp_path):
    bad = tmp_path / "bad"
    write_four_archives(bad, "0123456789", level=1)
    name = "train-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress((bad / name).read_bytes()))
    data[-1] ^= 1  # one label changed: a valid gzip, but not the official contents
    (bad / name).write_bytes(gzip.compress(bytes(data), compresslevel=1))
    folder = ArchiveFolder(bad, tmp_path / "cache", download=True, symbols=SYMBOL_SETS["fashion"])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is damaged \(its MD5 is not the official .*, nor are its contents the official files\), or it is not the Fashion-MNIST archive"):
        folder.prepare()
    (bad / name).write_bytes((bad / name).read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="is damaged"):
        folder.prepare()


def test_mnist_archives_are_not_fashion(fashion_official, tmp_path):
    mnist = tmp_path / "mnist"
    write_four_archives(mnist, "0123456789", level=9, n_train=500)  # other contents under the same names
    folder = ArchiveFolder(mnist, tmp_path / "cache", download=False, symbols=SYMBOL_SETS["fashion"])
    with pytest.raises(DataError, match="or it is not the Fashion-MNIST archive"):
        folder.prepare()


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debians_fashion_mnist_is_proven_and_loads(tmp_path):
    folder = ArchiveFolder(DEBIAN_FASHION, tmp_path / "cache", download=False, symbols=SYMBOL_SETS["fashion"])
    folder.prepare()
    images, labels = folder.load(train=False)
    assert images.shape == (10000, 28, 28) and torch.equal(torch.bincount(labels), torch.full((10,), 1000))
    mean = folder.load(train=True)[0].float().div(255)
    assert abs(mean.mean().item() - SYMBOL_SETS["fashion"].stats[0]) < 5e-4
    assert abs(mean.std().item() - SYMBOL_SETS["fashion"].stats[1]) < 5e-4


# -- KMNIST ------------------------------------------------------------------------------------------


def test_kmnist_in_torchvisions_layout(tmp_path, monkeypatch):
    raw = tmp_path / "data" / "KMNIST" / "raw"
    written = write_four_archives(raw, "0123456789")
    monkeypatch.setattr(KMNIST, "resources", [(n, written["md5s"][n]) for n, _ in KMNIST.resources])
    dm = DigitsDataModule(data_dir=str(tmp_path / "data"), dataset="kmnist", download=False, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 500 and len(dm.test_set) == 200
    assert dm.class_names == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    (raw / "t10k-images-idx3-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is damaged \(its MD5 is not the official [0-9a-f]+\), or it is not the KMNIST archive"):
        DigitsDataModule(data_dir=str(tmp_path / "data"), dataset="kmnist", download=False).prepare_data()


def test_a_missing_set_names_its_archives_and_the_fix(tmp_path):
    dm = DigitsDataModule(data_dir=str(tmp_path / "nothing"), dataset="emnist-letters", download=False)
    with pytest.raises(DataError, match=r"EMNIST letters is not complete .* gzip.zip .*biometrics.nist.gov"):
        dm.prepare_data()


# -- EMNIST ------------------------------------------------------------------------------------------

EMNIST_SPLITS = {  # dataset: (split, the classes in label order, the label of class 0)
    "emnist-letters": ("letters", string.ascii_lowercase, 1),
    "emnist-digits": ("digits", string.digits, 0),
    "emnist-balanced": ("balanced", "".join(EMNIST.classes_split_dict["balanced"]), 0),
}


@pytest.mark.parametrize("dataset", list(EMNIST_SPLITS))
def test_emnist_splits_load_upright_with_class_indices(dataset, tmp_path, monkeypatch):
    split, chars, offset = EMNIST_SPLITS[dataset]
    written = write_emnist_zip(tmp_path / "emnist", split, chars, offset)
    monkeypatch.setattr(EMNIST, "md5", written["md5"])
    (tmp_path / "emnist").chmod(0o555)
    before = tree(tmp_path / "emnist")
    dm = DigitsDataModule(data_dir=str(tmp_path / "emnist"), cache_dir=str(tmp_path / "cache"), dataset=dataset, download=False)
    dm.prepare_data()
    images, labels = dm.files.load(train=True)
    upright, classes = written["sets"]["train"]
    assert torch.equal(images, torch.from_numpy(upright))  # upright, as drawn: not as stored
    assert torch.equal(labels, torch.from_numpy(classes).long())  # letters: 1-26 -> 0-25
    assert dm.class_names == tuple(chars) and int(labels.max()) < len(chars)
    raw = tmp_path / "cache" / "EMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(
        ["gzip.zip", *(f"emnist-{split}-{s}-{k}-ubyte" for s in ("train", "test") for k in ("images-idx3", "labels-idx1"))]
    )  # only the chosen split is extracted
    assert tree(tmp_path / "emnist") == before


def test_emnist_zip_with_another_md5_is_refused(tmp_path):
    write_emnist_zip(tmp_path / "emnist", "letters", string.ascii_lowercase, 1)  # not NIST's MD5
    dm = DigitsDataModule(data_dir=str(tmp_path / "emnist"), cache_dir=str(tmp_path / "cache"), dataset="emnist-letters")
    with pytest.raises(DataError, match=r"gzip.zip is damaged \(its MD5 is not the official 58c8d27c.*\), or it is not the EMNIST letters archive"):
        dm.prepare_data()


def test_emnist_labels_outside_the_split_are_refused(tmp_path, monkeypatch):
    written = write_emnist_zip(tmp_path / "emnist", "letters", string.ascii_lowercase, 0)  # 0-25: class 0 is unused in letters
    monkeypatch.setattr(EMNIST, "md5", written["md5"])
    dm = DigitsDataModule(data_dir=str(tmp_path / "emnist"), cache_dir=str(tmp_path / "cache"), dataset="emnist-letters")
    dm.prepare_data()
    with pytest.raises(DataError, match="labels outside 1-26"):
        dm.setup("fit")


# -- conventions -------------------------------------------------------------------------------------


def test_emnist_convention_fits_the_box_to_24_centred_by_box():
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 10:16] = 255  # a 20x6 bar, MNIST's 20-pixel box, off centre
    out = apply(image, "emnist")
    ys, xs = np.nonzero(out > 127)
    assert ys.max() - ys.min() + 1 in (23, 24, 25) and abs((ys.min() + ys.max()) / 2 - 13.5) <= 1
    assert abs((xs.min() + xs.max()) / 2 - 13.5) <= 1
    assert apply(image, "mnist") is image


# -- through the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def letters(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("letters")
    written = write_emnist_zip(folder / "emnist", "letters", string.ascii_lowercase, 1, n_train=1500, n_test=200)
    return folder / "emnist", written["md5"]


def test_letters_train_save_their_names_and_convention_and_predict_letters(letters, tmp_path, monkeypatch, capsys, caplog, one_thread):
    data, md5 = letters
    monkeypatch.setattr(EMNIST, "md5", md5)
    monkeypatch.chdir(tmp_path)
    main([*FIT, "--trainer.max_epochs=4", f"--data.data_dir={data}", f"--data.cache_dir={tmp_path / 'cache'}",
          "--data.dataset=emnist-letters", "--data.augment=null"])  # fmt: skip
    (best,) = (tmp_path / "checkpoints" / "cnn").glob("epoch=*.ckpt")
    model = load_classifier(best)
    assert model.hparams.class_names == tuple(string.ascii_lowercase) and model.hparams.convention == "emnist"
    assert model.net[-1].out_features == 26
    ckpt = torch.load(best, weights_only=False)
    assert ckpt["datamodule_hyper_parameters"]["dataset"] == "emnist-letters"

    # test: the checkpoint's data set, without saying so; another one named is refused
    with caplog.at_level("INFO"):
        main(["test", f"--ckpt_path={best}", f"--data.data_dir={data}", f"--data.cache_dir={tmp_path / 'cache'}",
              "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert "Using the checkpoint's data.dataset=emnist-letters" in caplog.text
    assert "Test accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["test", f"--ckpt_path={best}", f"--data.data_dir={data}", "--data.dataset=fashion"])
    assert exit_.value.code == 2
    assert "was trained on data.dataset=emnist-letters" in capsys.readouterr().err

    # predict: the same command as for digits; the CSV's label is the letter
    images = tmp_path / "mine"
    images.mkdir()
    for ch in "abc":
        page = Image.new("L", (120, 120), 255)
        ImageDraw.Draw(page).text((60, 60), ch, fill=0, font=ImageFont.load_default(size=80), anchor="mm")
        page.save(images / f"{ch}.png")
    main(["predict", f"--ckpt_path={best}", f"--data.predict_path={images}", "--trainer.enable_progress_bar=false",
          "--prediction.output=letters.csv"])  # fmt: skip
    with open(tmp_path / "letters.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] and all(r["label"] in string.ascii_lowercase for r in rows)
    assert {f"p{i}" for i in range(26)} <= set(rows[0]) and not any(r["error"] for r in rows)


def test_mnist_data_module_is_the_same_class():
    assert MNISTDataModule is DigitsDataModule and DigitsDataModule().symbol_set is SYMBOL_SETS["mnist"]
    with pytest.raises(Exception, match="data.dataset must be one of"):
        DigitsDataModule(dataset="cifar")


def test_flip_mirrors_that_share_of_the_training_images_only():
    dm = DigitsDataModule(flip=0.5)
    images = torch.zeros(2000, 28, 28, dtype=torch.uint8)
    images[:, :, :5] = 255  # ink on the left
    torch.manual_seed(0)
    x = dm.to_inputs(images, augment=True)
    mirrored = (x[:, 0, :, -1] > 0).all(dim=1)
    assert 0.45 < mirrored.float().mean().item() < 0.55 and torch.equal(x[mirrored], images[mirrored].unsqueeze(1).flip(-1).float() / 255)
    assert torch.equal(dm.to_inputs(images, augment=False), images.unsqueeze(1).float() / 255)
    with pytest.raises(Exception, match="data.flip is a share"):
        DigitsDataModule(flip=2)


def test_prediction_images_follow_the_models_convention(tmp_path):
    from digits_lightning.prediction import ImageFiles

    page = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(page).rectangle((60, 40, 100, 160), fill=0)  # a tall dark bar on white paper
    page.save(tmp_path / "bar.png")
    boxes = {}
    for convention in ("mnist", "emnist", "fashion"):
        image = ImageFiles(str(tmp_path / "bar.png"), convention)[0]["image"].numpy()
        ys, xs = np.nonzero(image > 64)
        boxes[convention] = (ys.max() - ys.min() + 1, (ys.min() + ys.max()) / 2)
    assert boxes["mnist"][0] in (19, 20, 21) and boxes["emnist"][0] in (23, 24, 25) and boxes["fashion"][0] >= 27
    assert abs(boxes["emnist"][1] - 13.5) <= 1


def test_fashion_trains_and_predicts_class_names(fashion_official, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    main([*FIT, "--trainer.max_epochs=2", f"--data.data_dir={tmp_path / 'official'}", f"--data.cache_dir={tmp_path / 'cache'}",
          "--data.dataset=fashion", "--data.flip=0.5"])  # fmt: skip
    (best,) = (tmp_path / "checkpoints" / "cnn").glob("epoch=*.ckpt")
    assert load_classifier(best).hparams.convention == "fashion"
    page = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(page).ellipse((20, 30, 80, 70), fill=0)
    page.save(tmp_path / "thing.png")
    main(["predict", f"--ckpt_path={best}", f"--data.predict_path={tmp_path / 'thing.png'}",
          "--trainer.enable_progress_bar=false", "--prediction.output=things.csv"])  # fmt: skip
    with open(tmp_path / "things.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["label"] in FashionMNIST.classes and not row["error"]


def test_fashion_photos_keep_their_gray_levels(tmp_path):
    """A product photographed dark on white comes back as Fashion-MNIST's own image: light on black,
    its box filling the 28 pixels, its shading kept (the ink cleaning of digits would flatten it)."""
    from digits_lightning.conventions import read

    if DEBIAN_FASHION.is_dir():
        raw = gzip.open(DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").read()[16 : 16 + 20 * 784]
        originals = np.frombuffer(raw, np.uint8).reshape(20, 28, 28)
    else:  # a shaded blob whose box is 28 pixels tall
        yy, xx = np.mgrid[0:28, 0:28]
        blob = np.clip(1 - ((yy - 13.5) / 14) ** 2 - ((xx - 13.5) / 9) ** 2, 0, 1) * (0.5 + 0.5 * xx / 27)
        originals = np.round(blob * 255).astype(np.uint8)[None]
    errors = []
    for i, original in enumerate(originals):
        path = tmp_path / f"{i}.png"
        Image.fromarray(255 - original).resize((112, 112), Image.Resampling.BILINEAR).save(path)
        image, error = read(str(path), "fashion")
        assert error == "" and image.shape == (28, 28) and image.dtype == np.uint8
        errors.append(np.abs(image.astype(float) - original).mean())
    assert np.mean(errors) < 20  # gray levels out of 255, after a 4x enlargement and back
    assert read(str(tmp_path / "missing.png"), "fashion")[1].startswith("unreadable")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    assert read(str(tmp_path / "blank.png"), "fashion")[1].startswith("blank")
