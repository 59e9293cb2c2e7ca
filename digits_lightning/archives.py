"""The official archive files on disk: found, checked, extracted, and read by torchvision.

torchvision checks the `.gz` archives' MD5s and parses the IDX files; this module adds what it
leaves out: a read-only folder of archives used in place (linked into a cache in torchvision's
layout), checks of already-extracted files (torchvision never checksums those), atomic extraction
(`torchvision.datasets.utils.extract_archive` writes in place, so a kill leaves half a file that
looks extracted), and errors that name the file and the fix.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from torchvision.datasets import MNIST
from torchvision.datasets.utils import check_integrity

from digits_lightning.atomic_write import write_atomically
from digits_lightning.errors import UserError

ARCHIVES = [name for name, _ in MNIST.resources]
# Size and MD5 of each official file once extracted (torchvision checksums the archives only).
EXTRACTED = {
    "train-images-idx3-ubyte": (47040016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7840016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10008, "27ae3e4e09519cfbb04c329615203637"),
}


class DataError(UserError):
    """A data problem the user can fix; the message names the file and the fix."""


class ArchiveFolder:
    """MNIST's four files for one `data_dir`: torchvision's layout (`<data_dir>/MNIST/raw/`), or a
    folder that directly holds the archives, which is only read and mirrored under `cache_dir`."""

    def __init__(self, data_dir: Path, cache_dir: Path, download: bool) -> None:
        self.data_dir, self.cache_dir, self.download = data_dir, cache_dir, download
        self._ready = False  # checked once per process: `fit` then its test need not hash 60 MB again

    @property
    def root(self) -> Path:
        """The folder torchvision reads: `data_dir` itself, or the cache that mirrors an archive folder."""
        if _holds_archives(self.data_dir) and not _holds_archives(self.data_dir / "MNIST" / "raw"):
            return self.cache_dir
        return self.data_dir

    @property
    def raw_dir(self) -> Path:
        return self.root / "MNIST" / "raw"

    def prepare(self) -> None:
        """Make the four files available (links, checksums, extraction, download)."""
        if self._ready:
            return
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise DataError(
                f"data.data_dir {self.data_dir} is a file: pass the folder that holds the MNIST archives"
                " (or where to download them)"
            )
        if self.root != self.data_dir:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            for name in ARCHIVES:
                source, link = (self.data_dir / name).resolve(), self.raw_dir / name
                if source.exists() and not (link.is_symlink() and link.resolve() == source):
                    link.unlink(missing_ok=True)
                    link.symlink_to(source)
        self._check_files()
        self._extract()
        missing = [n for n in ARCHIVES if not (self.raw_dir / n).exists() and not self._extracted(n).exists()]
        if missing and not self.download:
            raise DataError(self._missing_message(missing, "download is off"))
        if missing:
            try:
                MNIST(self.root, train=True, download=True)  # fetches and extracts what is missing
            except (RuntimeError, OSError) as err:
                raise DataError(self._missing_message(missing, f"downloading failed: {_first_line(err)}")) from None
            self._check_files()  # what was downloaded, as what was there
        self._ready = True

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split as whole tensors: uint8 images `[N, 28, 28]` and int64 labels `[N]`."""
        try:
            split = MNIST(self.root, train=train, download=False)
        except RuntimeError as err:
            raise DataError(self._missing_message([], f"loading failed: {_first_line(err)}")) from None
        prefix = "train" if train else "t10k"
        images, labels = self._extracted(f"{prefix}-images-idx3-ubyte"), self._extracted(f"{prefix}-labels-idx1-ubyte")
        fix = " Delete the extracted files so they are extracted again from the official archives."
        if len(split.data) != len(split.targets):
            raise DataError(f"{images} holds {len(split.data)} images but {labels} {len(split.targets)} labels." + fix)
        if len(split.targets) and not 0 <= int(split.targets.min()) <= int(split.targets.max()) <= 9:
            raise DataError(f"{labels} holds labels outside 0-9." + fix)
        return split.data, split.targets

    def _extracted(self, archive: str) -> Path:
        return self.raw_dir / archive.removesuffix(".gz")

    def _check_files(self) -> None:
        """Refuse damaged files before torchvision sees them (it would re-download or mis-parse)."""
        for name, md5 in MNIST.resources:
            extracted, archive = self._extracted(name), self.raw_dir / name
            if extracted.exists():
                problem = idx_problem(extracted)
                if problem is None and archive.exists() and check_integrity(str(archive), md5):
                    problem = _official_problem(extracted)  # extracted from the official archive beside it
                if problem:
                    raise DataError(
                        f"{extracted}: {problem}. Delete it; it is extracted again from {name} (or downloaded again)."
                    )
            elif archive.exists() and not check_integrity(str(archive), md5):
                raise DataError(
                    f"{archive.resolve()} is damaged (its MD5 is not the official {md5}). Replace it"
                    " with the official archive, or delete it to download it again."
                )

    def _extract(self) -> None:
        for name in ARCHIVES:
            archive, extracted = self.raw_dir / name, self._extracted(name)
            if archive.exists() and not extracted.exists():
                with gzip.open(archive, "rb") as source:
                    write_atomically(extracted, lambda f: shutil.copyfileobj(source, f, 1 << 20))

    def _missing_message(self, missing: list[str], why: str) -> str:
        return (
            f"MNIST is not complete in {self.raw_dir} and {why}. "
            f"Missing: {', '.join(missing) or 'none of the archives, but reading them failed'}. "
            "Fix: put the four official archives (" + ", ".join(ARCHIVES) + ") into that folder, or"
            " point --data.data_dir at a folder that holds them, e.g. --data.data_dir ../shared/datasets/mnist"
        )


def idx_problem(path: Path) -> str | None:
    """Why an extracted IDX file cannot be right (its header or size is not MNIST's), or None."""
    with open(path, "rb") as f:
        raw = f.read(16)
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        return "it is not an uint8 IDX file"
    ndim, expected_ndim = raw[3], 3 if "-idx3-" in path.name else 1
    if ndim != expected_ndim or len(raw) < 4 + 4 * ndim:
        return f"it holds {ndim}-dimensional data, not {'images' if expected_ndim == 3 else 'labels'}"
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        return f"it holds images of {dims[1]}x{dims[2]} pixels, not 28x28"
    expected = 4 + 4 * ndim
    n = 1
    for d in dims:
        n *= d
    expected += n
    actual = path.stat().st_size
    if actual != expected:
        return f"it holds {actual} bytes where its header promises {expected} (truncated or damaged)"
    return None


def _official_problem(path: Path) -> str | None:
    """Why an extracted file of an official name is not the official file, or None."""
    size, md5 = EXTRACTED[path.name]
    if path.stat().st_size != size:
        return f"it holds {path.stat().st_size} bytes, not the official {size} (truncated or replaced)"
    if not check_integrity(str(path), md5):
        return f"its MD5 is not the official {md5} (damaged)"
    return None


def _holds_archives(folder: Path) -> bool:
    return any((folder / name).exists() for name in ARCHIVES)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digits_lightning"
