"""The official archive files of a symbol set on disk: found, checked, extracted, and read by torchvision.

torchvision checks the `.gz` archives' MD5s and parses the IDX files; this module adds what it
leaves out: a read-only folder of archives used in place (linked into a cache in torchvision's
layout), checks of already-extracted files (torchvision never checksums those), atomic extraction
(`torchvision.datasets.utils.extract_archive` writes in place, so a kill leaves half a file that
looks extracted), and errors that name the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zipfile
import zlib
from pathlib import Path

import torch
from torchvision.datasets import EMNIST, MNIST, FashionMNIST
from torchvision.datasets.utils import check_integrity

from digits_lightning.atomic_write import write_atomically
from digits_lightning.datasets import SYMBOL_SETS, SymbolSet
from digits_lightning.errors import UserError

ARCHIVES = [name for name, _ in MNIST.resources]
# Size and MD5 of each official file once extracted (torchvision checksums the archives only).
EXTRACTED = {
    "train-images-idx3-ubyte": (47040016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7840016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10008, "27ae3e4e09519cfbb04c329615203637"),
}
# Fashion-MNIST's, as published with it (Debian's package re-compresses the archives: their `.gz`
# MD5s are not torchvision's, their contents are these files).
FASHION_EXTRACTED = {
    "train-images-idx3-ubyte": (47040016, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": (60008, "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": (7840016, "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": (10008, "15d484375f8d13e6eb1aabb0c3f46965"),
}


class DataError(UserError):
    """A data problem the user can fix; the message names the file and the fix."""


class ArchiveFolder:
    """One symbol set's official files for one `data_dir`: torchvision's layout
    (`<data_dir>/<class name>/raw/`, e.g. `MNIST/raw/`, `FashionMNIST/raw/`, `EMNIST/raw/`), or a folder
    that directly holds the archives, which is only read and mirrored under `cache_dir`.

    MNIST, Fashion-MNIST and KMNIST come as four `.gz` IDX archives of the same names; EMNIST as one
    `gzip.zip` holding every split's `.gz` files, of which only the chosen split's four are extracted.
    An archive whose MD5 is not torchvision's is still taken where its extracted contents are proven
    to be the official files (sizes and MD5s known: MNIST, Fashion-MNIST), e.g. Debian's re-compressed
    Fashion-MNIST; anything else with a wrong MD5 is refused as damaged.
    """

    def __init__(self, data_dir: Path, cache_dir: Path, download: bool, symbols: SymbolSet | None = None) -> None:
        self.data_dir, self.cache_dir, self.download = data_dir, cache_dir, download
        self.symbols = symbols or SYMBOL_SETS["mnist"]
        self._ready = False  # checked once per process: `fit` then its test need not hash 60 MB again

    # -- what the symbol set's files are called -------------------------------------------------

    @property
    def _emnist(self) -> bool:
        return self.symbols.torchvision_class is EMNIST

    def archives(self) -> list[tuple[str, str]]:
        """(file name, official MD5) of each archive, read from torchvision's class when asked."""
        cls = self.symbols.torchvision_class
        return [("gzip.zip", cls.md5)] if self._emnist else list(cls.resources)

    def _members(self, archive: str) -> list[str]:
        """The files an archive holds, once extracted, named as torchvision reads them."""
        if self._emnist:
            return [f"emnist-{self.symbols.split}-{part}-ubyte" for part in
                    ("train-images-idx3", "train-labels-idx1", "test-images-idx3", "test-labels-idx1")]  # fmt: skip
        return [archive.removesuffix(".gz")]

    def _official(self) -> dict[str, tuple[int, str]]:
        """Size and MD5 of the official extracted files, where known (looked up when asked)."""
        cls = self.symbols.torchvision_class
        return {MNIST: EXTRACTED, FashionMNIST: FASHION_EXTRACTED}.get(cls, {})

    def _kwargs(self) -> dict:
        return {"split": self.symbols.split} if self._emnist else {}

    # -- where -----------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The folder torchvision reads: `data_dir` itself, or the cache that mirrors an archive folder."""
        names = [name for name, _ in self.archives()]
        own = self.data_dir / self.symbols.torchvision_class.__name__ / "raw"
        if _holds(self.data_dir, names) and not _holds(own, names):
            return self.cache_dir
        return self.data_dir

    @property
    def raw_dir(self) -> Path:
        return self.root / self.symbols.torchvision_class.__name__ / "raw"

    def prepare(self) -> None:
        """Make the files available (links, checksums, extraction, download)."""
        if self._ready:
            return
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise DataError(
                f"data.data_dir {self.data_dir} is a file: pass the folder that holds the {self.symbols.title} archives"
                " (or where to download them)"
            )
        if self.root != self.data_dir:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            for name, _ in self.archives():
                source, link = (self.data_dir / name).resolve(), self.raw_dir / name
                if source.exists() and not (link.is_symlink() and link.resolve() == source):
                    link.unlink(missing_ok=True)
                    link.symlink_to(source)
        self._check_files()
        self._extract()
        missing = [
            name for name, _ in self.archives()
            if not (self.raw_dir / name).exists() and not all(self._extracted(m).exists() for m in self._members(name))
        ]  # fmt: skip
        if missing and not self.download:
            raise DataError(self._missing_message(missing, "download is off"))
        if missing:
            if self._proven:
                # torchvision would fetch every archive whose MD5 is not its own, over the re-compressed one.
                raise DataError(self._missing_message(missing, "the others are re-compressed copies, which a download would replace"))
            try:  # fetches and extracts what is missing
                self.symbols.torchvision_class(self.root, train=True, download=True, **self._kwargs())
            except (RuntimeError, OSError) as err:
                raise DataError(self._missing_message(missing, f"downloading failed: {_first_line(err)}")) from None
            self._check_files()  # what was downloaded, as what was there
        self._ready = True

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split as whole tensors: uint8 images `[N, 28, 28]`, upright, and int64 class indices `[N]`."""
        symbols = self.symbols
        try:
            split = symbols.torchvision_class(self.root, train=train, download=False, **self._kwargs())
        except RuntimeError as err:
            raise DataError(self._missing_message([], f"loading failed: {_first_line(err)}")) from None
        images, labels = self._split_files(train)
        fix = " Delete the extracted files so they are extracted again from the official archives."
        if len(split.data) != len(split.targets):
            raise DataError(f"{images} holds {len(split.data)} images but {labels} {len(split.targets)} labels." + fix)
        low, high = symbols.label_offset, symbols.label_offset + len(symbols.class_names) - 1
        if len(split.targets) and not low <= int(split.targets.min()) <= int(split.targets.max()) <= high:
            raise DataError(f"{labels} holds labels outside {low}-{high}." + fix)
        data = split.data.transpose(1, 2).contiguous() if symbols.transposed else split.data
        targets = split.targets - symbols.label_offset if symbols.label_offset else split.targets
        return data, targets

    def _split_files(self, train: bool) -> tuple[Path, Path]:
        if self._emnist:
            members = self._members("gzip.zip")
            return (self._extracted(members[0]), self._extracted(members[1])) if train else (
                self._extracted(members[2]), self._extracted(members[3]))  # fmt: skip
        prefix = "train" if train else "t10k"
        return self._extracted(f"{prefix}-images-idx3-ubyte"), self._extracted(f"{prefix}-labels-idx1-ubyte")

    def _extracted(self, member: str) -> Path:
        return self.raw_dir / member

    def _check_files(self) -> None:
        """Refuse damaged files before torchvision sees them (it would re-download or mis-parse)."""
        self._proven: set[str] = set()
        for name, md5 in self.archives():
            archive, members = self.raw_dir / name, self._members(name)
            present = [m for m in members if self._extracted(m).exists()]
            official = archive.exists() and (check_integrity(str(archive), md5) or self._contents_proven(archive))
            for member in present:
                extracted = self._extracted(member)
                problem = idx_problem(extracted)
                if problem is None and official:
                    problem = self._official_problem(extracted)  # extracted from the official archive beside it
                if problem:
                    raise DataError(
                        f"{extracted}: {problem}. Delete it; it is extracted again from {name} (or downloaded again)."
                    )
            if len(present) < len(members) and archive.exists() and not official:
                raise DataError(
                    f"{archive.resolve()} is damaged (its MD5 is not the official {md5}{self._contents_note()}),"
                    f" or it is not the {self.symbols.title} archive. Replace it with the official archive, or delete"
                    " it to download it again."
                )

    def _contents_note(self) -> str:
        return ", nor are its contents the official files" if self._official() and not self._emnist else ""

    def _contents_proven(self, archive: Path) -> bool:
        """A re-compressed archive (another MD5) whose contents are the official file: size and MD5."""
        official = self._official().get(archive.name.removesuffix(".gz"))
        if official is None:
            return False
        size, md5 = official
        digest, length = hashlib.md5(), 0
        try:
            with gzip.open(archive, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    length += len(chunk)
                    if length > size:
                        return False
        except (OSError, EOFError, zlib.error):
            return False  # not gzip, or truncated
        proven = length == size and digest.hexdigest() == md5
        if proven:
            self._proven.add(archive.name)
        return proven

    def _extract(self) -> None:
        for name, _ in self.archives():
            archive = self.raw_dir / name
            todo = [m for m in self._members(name) if not self._extracted(m).exists()]
            if not archive.exists() or not todo:
                continue
            if self._emnist:
                self._extract_zip(archive, todo)
                continue
            with gzip.open(archive, "rb") as source:
                write_atomically(self._extracted(todo[0]), lambda f: shutil.copyfileobj(source, f, 1 << 20))

    def _extract_zip(self, archive: Path, members: list[str]) -> None:
        """EMNIST: only the chosen split's `gzip/<member>.gz` files out of `gzip.zip`, each gunzipped."""
        with zipfile.ZipFile(archive) as zipped:
            names = set(zipped.namelist())
            for member in members:
                inner = f"gzip/{member}.gz"
                if inner not in names:
                    raise DataError(f"{archive.resolve()} does not hold {inner}: it is not the official EMNIST gzip.zip")
                with zipped.open(inner) as packed, gzip.open(packed, "rb") as source:
                    write_atomically(self._extracted(member), lambda f: shutil.copyfileobj(source, f, 1 << 20))

    def _official_problem(self, path: Path) -> str | None:
        """Why an extracted file of an official name is not the official file, or None."""
        official = self._official().get(path.name)
        if official is None:
            return None
        size, md5 = official
        if path.stat().st_size != size:
            return f"it holds {path.stat().st_size} bytes, not the official {size} (truncated or replaced)"
        if not check_integrity(str(path), md5):
            return f"its MD5 is not the official {md5} (damaged)"
        return None

    def _missing_message(self, missing: list[str], why: str) -> str:
        names = [name for name, _ in self.archives()]
        what = "the official archive" if len(names) == 1 else f"the {len(names)} official archives"
        return (
            f"{self.symbols.title} is not complete in {self.raw_dir} and {why}. "
            f"Missing: {', '.join(missing) or 'none of the archives, but reading them failed'}. "
            f"Fix: put {what} (" + ", ".join(names) + ") into that folder, or"
            f" point --data.data_dir at a folder that holds them; {self.symbols.fix}"
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


def _holds(folder: Path, names: list[str]) -> bool:
    return any((folder / name).exists() for name in names)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digits_lightning"
