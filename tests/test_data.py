"""MNISTDataModule through torchvision's real parsing path, on tiny IDX files and archives."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler

from digits_lightning.archives import ARCHIVES, DataError
from digits_lightning.cli import main
from digits_lightning.data import MNISTDataModule, Shard, SliceBatches
from digits_lightning.resume import EpochShuffle
from tests.helpers import write_tiny_archives, write_tiny_mnist


def test_splits_are_seeded_disjoint_tensors(tiny_mnist):
    dm = MNISTDataModule(data_dir=str(tiny_mnist), val_size=200, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 1000 and len(dm.val_set) == 200 and len(dm.test_set) == 300
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (28, 28)
    again = MNISTDataModule(data_dir=str(tiny_mnist), val_size=200)
    again.setup("fit")
    assert torch.equal(again.val_set.labels, dm.val_set.labels)
    other = MNISTDataModule(data_dir=str(tiny_mnist), val_size=200, split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_set.images, dm.val_set.images)


def test_loader_serves_whole_batches_by_index(tiny_mnist):
    dm = MNISTDataModule(data_dir=str(tiny_mnist), val_size=200, batch_size=64)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [64] * 15 + [40]
    x, y = batches[0]
    assert x.shape == (64, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    seen = torch.cat([y for _, y in batches])
    assert torch.equal(seen.sort().values, dm.train_set.labels.sort().values)  # a permutation, nothing lost
    assert torch.equal(torch.cat([y for _, y in dm.val_dataloader()]), dm.val_set.labels)  # in order


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("sampler", [EpochShuffle(1000), range(10, 1010)], ids=["shuffled", "any-sampler"])
def test_slice_batches_are_torchs_batches(sampler, drop_last):
    """The same batches as torch's `BatchSampler`, as tensors: what Lightning's distributed sampler relies on."""
    ours, torchs = list(SliceBatches(sampler, 64, drop_last)), list(BatchSampler(sampler, 64, drop_last))
    assert len(ours) == len(torchs) == len(SliceBatches(sampler, 64, drop_last))
    assert [b.tolist() for b in ours] == torchs


@pytest.mark.parametrize("n", [1000, 1001])
def test_ddp_shards_cover_the_split(n):
    """Under DDP: training shards are equal (padded) and cover every image; evaluation shards are
    disjoint, unpadded and cover every image exactly once, so metrics count each image once."""
    train = [EpochShuffle(n, rank, 2).permutation() for rank in (0, 1)]
    assert len(train[0]) == len(train[1]) == -(-n // 2)
    assert set(torch.cat(train).tolist()) == set(range(n))
    evaluate = torch.cat([Shard(n, rank, 2).permutation() for rank in (0, 1)])
    assert sorted(evaluate.tolist()) == list(range(n))


def test_batches_are_unit_range_images_with_a_channel(tiny_mnist):
    dm = MNISTDataModule(data_dir=str(tiny_mnist))
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[:, :, 14:] = 255
    x, _ = dm.on_after_batch_transfer((images, torch.zeros(3, dtype=torch.long)), 0)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert (x.min().item(), x.max().item()) == (0.0, 1.0)


def test_an_archive_folder_trains_offline_and_is_never_written(tmp_path, monkeypatch, capsys):
    """The offline path the README recommends, end to end: a folder of the four `.gz` archives ->
    checksums -> extraction into the cache -> a fit. (Tiny archives, so their MD5s stand in for the
    official ones.)"""
    from torchvision.datasets import MNIST

    archives = tmp_path / "archives"
    md5s, extracted = write_tiny_archives(archives)
    before = {p.name: p.stat().st_mtime_ns for p in archives.iterdir()}
    monkeypatch.setattr(MNIST, "resources", [(name, md5s[name]) for name, _ in MNIST.resources])
    monkeypatch.setattr("digits_lightning.archives.EXTRACTED", extracted)
    monkeypatch.chdir(tmp_path)
    main(["fit", f"--data.data_dir={archives}", f"--data.cache_dir={tmp_path / 'cache'}", "--data.download=false",
          "--data.val_size=200", "--data.batch_size=100", "--trainer.max_epochs=2", "--model=DenseClassifier",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
    assert float(capsys.readouterr().out.split("Test accuracy: ")[1].split("%")[0]) > 50
    assert {p.name: p.stat().st_mtime_ns for p in archives.iterdir()} == before  # only read
    assert sorted(p.name for p in (tmp_path / "cache" / "MNIST" / "raw").iterdir()) == sorted(
        [*ARCHIVES, *(name.removesuffix(".gz") for name in ARCHIVES)]
    )


def test_unofficial_archives_are_refused_by_name(tmp_path):
    archives = tmp_path / "archives"
    write_tiny_archives(archives)
    dm = MNISTDataModule(data_dir=str(archives), cache_dir=str(tmp_path / "cache"), download=False)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is damaged"):
        dm.prepare_data()
    assert sorted(p.name for p in archives.iterdir()) == sorted(ARCHIVES)  # nothing written there


def test_real_archive_folder_loads_offline(real_mnist, tmp_path):
    dm = MNISTDataModule(data_dir=str(real_mnist), cache_dir=str(tmp_path), download=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 55_000 and len(dm.val_set) == 5_000 and len(dm.test_set) == 10_000
    assert dm.files.raw_dir == tmp_path / "MNIST" / "raw"


def test_corrupted_archive_is_named_with_the_fix(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is damaged .* Replace it"):
        dm.prepare_data()


def test_truncated_extracted_file_is_refused(tmp_path):
    raw = write_tiny_mnist(tmp_path) / "MNIST" / "raw"
    f = raw / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: it holds .* \(truncated"):
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()


def test_missing_files_offline_say_what_to_put_where(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in ARCHIVES) and "--data.data_dir" in message
