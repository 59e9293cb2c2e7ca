"""Checkpoint files: written so that a kill never leaves half a file, read with errors that name the fix.

Lightning 2.6 saves through an fsspec transaction: into a temporary file in the system's temp
folder, then `shutil.move`d into place, without fsync. Where that folder is another file system
(a /tmp in memory, checkpoints on disk) the move is a copy, so a kill during it leaves a truncated
`last.ckpt`. `AtomicCheckpointIO` writes with `write_atomically` instead: beside the target,
fsynced, renamed over it.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from digits_lightning.atomic_write import write_atomically
from digits_lightning.errors import CheckpointError
from digits_lightning.models import DigitClassifier

RESUME_HINT = "`fit --ckpt_path last` resumes from the newest last.ckpt of the model's checkpoint folder"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic and whose loads fail with a `CheckpointError`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return read_checkpoint(path, map_location=map_location, weights_only=weights_only)


def read_checkpoint(path, map_location: Any = "cpu", weights_only: bool | None = True) -> dict[str, Any]:
    """The checkpoint at `path`, or a `CheckpointError` saying why it is not one and what to do."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file. Check the path ({RESUME_HINT}).")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass one of the .ckpt files in it.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # torch raises many types for a damaged file: any of them means the same here
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {reason}): it is damaged, truncated or"
            " not a checkpoint at all. Use another one, e.g. the best epoch=NN-*.ckpt beside it."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it holds no state_dict). Pass a .ckpt file written by `fit`."
        )
    return checkpoint


def load_classifier(path, map_location: Any = "cpu"):
    """The model saved in a checkpoint of `fit`, in eval mode: `model(x)` takes images `[N, 1, 28, 28]`
    in [0, 1] and gives logits; `model.hparams.class_names` names the classes."""
    checkpoint = read_checkpoint(path)
    cls = check_model_class(path, checkpoint, DigitClassifier)
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True).eval()


def check_model_class(path, checkpoint: dict[str, Any], base: type) -> type:
    """Refuses a checkpoint saved by a class other than a `base` subclass, or with settings it does not take.

    (The CLI rebuilds the model from the class and settings saved in the checkpoint.)
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        if any(not k.startswith("_") for k in hparams):  # LightningCLI would read them as DigitClassifier's
            raise CheckpointError(
                f"{path} does not say which model saved it (it was not written by this CLI, or by an old"
                " version). Load it in Python with DenseClassifier.load_from_checkpoint or"
                " CNNClassifier.load_from_checkpoint instead."
            )
        return base
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise CheckpointError(
            f"{path} was saved by {class_path}, which does not exist in this version of digits_lightning."
            " Evaluate it with the version that trained it, or train anew."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise CheckpointError(f"{path} was saved by {class_path}, which is not a digit classifier ({base.__name__}).")
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in hparams if not k.startswith("_") and k not in accepted)
    if unknown:
        raise CheckpointError(
            f"{path} was saved with settings {name} no longer takes ({', '.join(unknown)}): it comes from an"
            " incompatible version of digits_lightning. Evaluate it with that version, or train anew."
        )
    return cls


def _is_local(path) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)
