"""`python -m digits_lightning export --ckpt_path CKPT`: the model as ONNX, float and int8, so that
people's files can be read where torch cannot be installed (`predict-onnx`, `onnx_runtime.py`).

The ONNX file takes what the model takes, images `[N, 1, 28, 28]` in [0, 1], white ink on black,
any N: the normalisation is inside the graph, and the class names, the preprocessing convention
and the normalisation are in its metadata, so the file alone says how to feed it.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export), pinned, from torch 2.6 on (its
first release of this exporter, hence the `export` extra's floor). It is the default since torch
2.9 and the one maintained; the TorchScript exporter is deprecated there. Under torch.export a
dynamic dimension cannot be 1 in the example, so the example batch holds 2 images.

The int8 variant is quantised statically (QDQ, int8 per-channel weights, uint8 activations,
calibrated on validation images): onnxruntime recommends static quantisation for convolutional
nets, whose dynamic quantisation (`ConvInteger`) it runs slowly or not at all.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from torch import nn

from digits_lightning import __version__
from digits_lightning.atomic_write import write_atomically
from digits_lightning.checkpoints import load_classifier, read_checkpoint
from digits_lightning.errors import SettingError, UserError, user_error_in

INPUT, OUTPUT = "images", "logits"
OPSET = 20
CALIBRATION = 500  # validation images: a few hundred pin the activations' ranges (see docs/export.md)
INSTALL = "pip install 'digits_lightning[export]' (onnx, onnxruntime, onnxscript)"
TORCH = "2.6"  # the first torch whose torch.onnx.export takes dynamo=True with dynamic_shapes


class Graph(nn.Module):
    """What the ONNX file computes: the model's normalisation, then its plain network in NCHW.

    Not the LightningModule's own `forward`, whose memory-layout switch (`channels_last`) and
    `torch.compile` are choices for training on a GPU, not part of what the model computes.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.net = model.net
        self.mean, self.std = model._mean, model._std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean or self.std != 1:
            images = (images - self.mean) / self.std
        return self.net(images)


def metadata(model, ckpt: Path) -> dict[str, str]:
    """What a runtime needs to feed the model and name its answers, as ONNX `metadata_props`."""
    hp = model.hparams
    return {
        "class_names": json.dumps(list(hp.class_names)),
        # How a file becomes the 28x28 input: preprocess.py's MNIST convention (20x20 box, centre of mass).
        "convention": str(hp.get("convention", "mnist")),
        "input": f"{INPUT}: float32 [N, 1, 28, 28] in [0, 1], white ink on black",
        "output": f"{OUTPUT}: float32 [N, {len(hp.class_names)}]; softmax gives the probabilities",
        "normalization": json.dumps({"normalize": hp.normalize, "mean": model._mean, "std": model._std}),
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "checkpoint": ckpt.name,
        "digits_lightning_version": __version__,
    }


def export_float(model, ckpt: Path, path: Path) -> None:
    """The float model as ONNX with a dynamic batch axis and its metadata, checked by `onnx.checker`."""
    import onnx

    graph = Graph(model).eval()
    example = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # >= 2: see the module's note
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            graph, (example,), str(raw), dynamo=True, opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, verbose=False,
        )  # fmt: skip
        proto = onnx.load(str(raw))
    _save(proto, metadata(model, ckpt), f"{type(model).__name__} from {ckpt.name}, float32", path)


def export_int8(float_path: Path, calibration: np.ndarray, path: Path, method: str = "MinMax", reduce_range: bool = True) -> None:
    """Static QDQ quantisation of the float model: int8 per-channel weights, uint8 activations whose
    ranges come from `calibration` (uint8 `[N, 28, 28]` validation images).

    `reduce_range` (7-bit weights) keeps the integer products from saturating on CPUs without VNNI:
    a file runs on any CPU, and on validation it changed no digit (docs/export.md).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 100)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: (batch[:, None] / np.float32(255)).astype(np.float32)}

    source = onnx.load(str(float_path))
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_path), str(prepared))  # shape inference and folding, as recommended
        quantize_static(
            str(prepared), str(quantised), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod[method],
            reduce_range=reduce_range,
        )  # fmt: skip
        proto = onnx.load(str(quantised))
    props = {p.key: p.value for p in source.metadata_props}
    props["quantization"] = (
        f"int8 static QDQ: int8 per-channel weights{' (7-bit range)' * reduce_range}, uint8 activations,"
        f" {method}-calibrated on {len(calibration)} validation images"
    )
    _save(proto, props, source.doc_string.replace("float32", "int8 (QDQ)"), path)


def _save(proto, props: dict[str, str], doc: str, path: Path) -> None:
    import onnx

    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = doc
    proto.producer_name = "digits_lightning"
    onnx.checker.check_model(proto, full_check=True)
    write_atomically(path, lambda f: f.write(proto.SerializeToString()))


def validation_images(ckpt: Path, data_dir: str, cache_dir: str | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """The validation split the checkpoint was trained with (never its training images), uint8
    `[N, 28, 28]`, with labels."""
    from digits_lightning.data import MNISTDataModule

    saved = read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {}
    split = {key: saved[key] for key in ("val_size", "split_seed") if key in saved}
    data = MNISTDataModule(data_dir=data_dir, cache_dir=cache_dir, download=download, on_device=False, **split)
    data.files.prepare()
    data.setup("validate")
    return data.val_set.images.numpy(), data.val_set.labels.numpy()


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m digits_lightning export",
        description="Write a checkpoint's model as ONNX (float and int8) for prediction without torch (predict-onnx).",
        exit_on_error=False,
    )  # fmt: skip
    parser.add_argument("--ckpt_path", type=str, required=True, help="the checkpoint of `fit` to export")
    parser.add_argument("--out", type=str, default=None, help="the folder to write to (default: the checkpoint's)")
    parser.add_argument("--int8", type=bool, default=True, help="also write the int8 model (NAME.int8.onnx)")
    parser.add_argument("--calibration", type=int, default=CALIBRATION, help="validation images that calibrate the int8 model")
    parser.add_argument("--data.data_dir", type=str, default="data", help="MNIST, for the validation images (as for fit)")
    parser.add_argument("--data.cache_dir", type=str, default=None, help="where archives are extracted (as for fit)")
    parser.add_argument("--data.download", type=bool, default=True, help="fetch MNIST if it is missing (as for fit)")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace existing .onnx files")
    return parser


def main(args: list[str]) -> None:
    config = parser().parse_args(args)
    if torch.__version__ < TORCH:  # (a TorchVersion: compares as a version, not as text)
        raise UserError(f"export needs torch >= {TORCH} (its torch.export-based exporter), this is {torch.__version__}: {INSTALL}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"export needs {err.name}: {INSTALL}") from None
    if config.calibration < 1:
        raise SettingError(f"--calibration must be at least 1, got {config.calibration}")
    ckpt = Path(config.ckpt_path).expanduser()
    model = load_classifier(ckpt)  # (a missing or foreign checkpoint is a CheckpointError: one line)
    out = Path(config.out).expanduser() if config.out else ckpt.parent
    paths = [out / f"{ckpt.stem}.onnx"] + ([out / f"{ckpt.stem}.int8.onnx"] if config.int8 else [])
    taken = [str(p) for p in paths if p.exists()]
    if taken and not config.overwrite:
        raise SettingError(f"{', '.join(taken)} already exist{'s' * (len(taken) == 1)}: pass another --out, or --overwrite true")
    try:
        images, labels = validation_images(ckpt, config.data.data_dir, config.data.cache_dir, config.data.download)
    except ValueError as err:
        mistake = user_error_in(err)
        if mistake is None:
            raise
        raise mistake from None
    export_float(model, ckpt, paths[0])
    reference = _probabilities_torch(model, images)
    _report("ONNX model", paths[0], images, labels, reference)
    if config.int8:
        export_int8(paths[0], images[: config.calibration], paths[1])
        _report("int8 model", paths[1], images, labels, reference, smaller_than=paths[0])


def _probabilities_torch(model, images: np.ndarray) -> np.ndarray:
    """The checkpoint's own answers, through the LightningModule's `forward` as `predict` runs it
    (float32, channels_last where set): what the exported files must agree with."""
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(b).unsqueeze(1) / 255).softmax(1) for b in np.array_split(images, 20)]).numpy()


def _report(what: str, path: Path, images: np.ndarray, labels: np.ndarray, reference: np.ndarray, smaller_than=None) -> None:
    """One line: where, how large, and how it agrees with the checkpoint on the validation images."""
    from digits_lightning.onnx_runtime import OnnxClassifier

    probs = OnnxClassifier(path).probabilities(images)
    agree = (probs.argmax(1) == reference.argmax(1)).mean()
    size = path.stat().st_size
    ratio = f", {smaller_than.stat().st_size / size:.1f}x smaller" if smaller_than else ""
    print(
        f"{what + ':':12}{path} ({size / 1024:,.0f} KB{ratio}); on the {len(images):,} validation images: same digit as"
        f" the checkpoint for {agree:.2%}, accuracy {(probs.argmax(1) == labels).mean():.2%}"
        f" (checkpoint {(reference.argmax(1) == labels).mean():.2%}), largest probability difference"
        f" {np.abs(probs - reference).max():.1e}",
        flush=True,
    )
