"""Do test-time augmentation or a checkpoint ensemble add accuracy? Measured on validation, reported on test.

For checkpoints of one `fit` (the best first, then e.g. earlier epochs' checkpoints), on the
checkpoint's own validation split and data set:

- `plain`: the best checkpoint, as `test` runs it;
- `tta`: its softmax averaged over the image and its four 1-pixel shifts (and, for a model trained
  with mirrored images, `--data.flip`, the mirror images of those five): `--model.tta`;
- `ensemble`: the softmax averaged over the checkpoints given;
- `ensemble+tta`: both.

The variant with the highest validation accuracy is the one to adopt, and only if it beats `plain`
by more than the validation set's resolution (one image in 5,000 = 0.02%); the test accuracies are
printed beside, for the record, not to choose.

    python benchmarks/tta.py --data_dir ../shared/datasets/mnist --ckpts runs/mnist/resnet-run/checkpoints/resnet/epoch=14-*.ckpt \\
        runs/mnist/resnet-run/checkpoints/resnet/epoch=13-*.ckpt runs/mnist/resnet-run/checkpoints/resnet/epoch=12-*.ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hardware import describe  # noqa: E402
from digits_lightning.checkpoints import load_classifier, read_checkpoint  # noqa: E402
from digits_lightning.data import DigitsDataModule  # noqa: E402
from digits_lightning.devices import native_bf16  # noqa: E402

@torch.no_grad()
def probabilities(model, images: torch.Tensor, tta: str, batch: int = 1000) -> torch.Tensor:
    """The softmax `test` computes (`DigitClassifier.evaluate`) under the `tta` setting given."""
    model.hparams.tta = tta
    out = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].unsqueeze(1).float().div(255)
        with torch.autocast("cpu", torch.bfloat16, enabled=native_bf16("cpu")):  # as `test` runs on this CPU
            out.append(model.evaluate(x).float().softmax(1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpts", nargs="+", required=True, help="the best checkpoint first")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    print(describe())
    saved = read_checkpoint(args.ckpts[0]).get("datamodule_hyper_parameters") or {}
    dm = DigitsDataModule(
        data_dir=args.data_dir, cache_dir=tempfile.mkdtemp(prefix="digits-cache-"), download=False,
        dataset=saved.get("dataset", "mnist"), val_size=saved.get("val_size", 5000), split_seed=saved.get("split_seed", 0),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    splits = {"val": (dm.val_set.images, dm.val_set.labels), "test": (dm.test_set.images, dm.test_set.labels)}
    models = [load_classifier(path) for path in args.ckpts]
    results = {}
    for split, (images, labels) in splits.items():
        views = "shifts+mirror" if saved.get("flip") else "shifts"
        probs = {tta: [probabilities(m, images, views if tta else "none") for m in models] for tta in (False, True)}
        variants = {
            "plain": probs[False][0], "tta": probs[True][0],
            "ensemble": sum(probs[False]) / len(models), "ensemble+tta": sum(probs[True]) / len(models),
        }  # fmt: skip
        results[split] = {name: (p.argmax(1) == labels).float().mean().item() for name, p in variants.items()}
    chosen = max(results["val"], key=lambda k: (results["val"][k], k == "plain"))
    if results["val"][chosen] - results["val"]["plain"] <= 1 / len(splits["val"][1]):
        chosen = "plain"
    print(f"dataset {dm.hparams.dataset}; checkpoints: {', '.join(Path(p).name for p in args.ckpts)}")
    print("| variant | validation accuracy | test accuracy (reported only) |\n|---|---|---|")
    for name in results["val"]:
        print(f"| {name} | {results['val'][name]:.2%} | {results['test'][name]:.2%} |")
    print(f"chosen on validation: {chosen}")
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoints": args.ckpts, "results": results, "chosen": chosen}, indent=1))


if __name__ == "__main__":
    main()
