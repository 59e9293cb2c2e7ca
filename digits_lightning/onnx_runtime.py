"""An exported model (`export.py`) run by onnxruntime with numpy alone: no torch, no Lightning.

It reads what the file says about itself (class names, preprocessing convention, input) from the
metadata `export` wrote, so a file from another version or another tool is refused with the
reason rather than fed the wrong images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from digits_lightning.errors import UserError

CONVENTIONS = ("mnist",)  # what preprocess.py makes of a file; a model that wants another is refused
INSTALL = "pip install onnxruntime numpy pillow (docs/export.md)"


class OnnxClassifier:
    """An exported digit classifier.

    Args:
        path: The `.onnx` file written by `python -m digits_lightning export`.
        threads: CPU threads for the model (None: onnxruntime's choice, every core).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(f"predicting with an ONNX model needs onnxruntime: {INSTALL}") from None
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: no such ONNX model{' (it is a folder)' if path.is_dir() else ''}. Write one with"
                            " python -m digits_lightning export --ckpt_path CKPT")  # fmt: skip
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its warnings are for the developers of graphs, not for our users
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for a file it cannot load
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"{path} is not a readable ONNX model ({reason[:200]}): it is damaged, truncated or not ONNX."
                " Export it again with python -m digits_lightning export"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.class_names = [str(c) for c in json.loads(props["class_names"])]
            self.convention = props["convention"]
        except (KeyError, ValueError, TypeError):
            raise UserError(
                f"{path} does not say what it reads (no class_names or convention in its metadata): it was not"
                " written by python -m digits_lightning export. Export the checkpoint with it"
            ) from None
        if self.convention not in CONVENTIONS:
            raise UserError(f"{path} reads images in the {self.convention!r} convention, which this version cannot"
                            f" prepare ({', '.join(CONVENTIONS)}): upgrade digits_lightning")  # fmt: skip
        self.metadata = dict(props)
        self.path = path
        self.input = self.session.get_inputs()[0].name

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 `[N, 28, 28]` digits, white ink on black (as `preprocess.preprocess_file` gives them)
        -> float32 `[N, classes]` class probabilities."""
        x = (images.reshape(-1, 1, 28, 28) / np.float32(255)).astype(np.float32)
        logits = self.session.run(None, {self.input: x})[0].astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)  # softmax in float32, as `predict_step` computes it
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)
