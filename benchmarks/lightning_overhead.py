"""Lightning overhead and data-path speed-up, on the same model, recipe and tensors (CPU or CUDA).

The model and recipe (network, optimiser settings, batch size, normalisation, augmentation, epochs)
are read from the config, `configs/<model>.yaml` unless --config names another. Runs, interleaved and
repeated (medians):
  lightning  - our stack: MNISTDataModule + the model + a Trainer (no logger, checkpoints or progress
               bar, which the plain loop lacks too), the fit loop's time
  plain      - a hand-written PyTorch loop over the same in-memory tensors, same recipe
  per-sample - the recipe most users write: torchvision MNIST with ToTensor + Normalize through a
               DataLoader (per-sample PIL conversion + collate), same model and optimiser; where the
               config distorts digits, torchvision's RandomAffine with the same limits (lighter than
               ours: no elastic wobble or pen width)
and prints seconds per epoch, the ratios lightning/plain (target <= 1.15) and per-sample/lightning,
and Lightning's own cost per step (training and validation steps) beside the plain loop's step;
--batch_size measures the same at another batch size (speed only: the learning rate stays). All
three run in the precision `fit` chooses on this CPU (bf16 mixed where it computes bfloat16
natively), unless --precision says otherwise.

    python benchmarks/lightning_overhead.py --data_dir ../shared/datasets/mnist --model dense
    python benchmarks/lightning_overhead.py --data_dir ../shared/datasets/mnist --model dense --batch_size 2048 --skip_per_sample
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import MNIST

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from benchmarks.hardware import describe  # noqa: E402
from digits_lightning.callbacks import Report  # noqa: E402
from digits_lightning.cli import DigitsCLI  # noqa: E402
from digits_lightning.devices import native_bf16, skip_nvml_probe_without_gpu  # noqa: E402

warnings.filterwarnings("ignore")


def build(args) -> DigitsCLI:
    """The config's model, data module and trainer, built by the real CLI as `fit --config` builds them."""
    config = args.config or ROOT / "configs" / f"{args.model}.yaml"
    data = [f"--data.data_dir={args.data_dir}"] + ([f"--data.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    data += [f"--data.batch_size={args.batch_size}"] if args.batch_size else []
    return DigitsCLI(args=["--config", str(config), *data], run=False)


def make(args):
    cli = build(args)
    return cli.model, cli.datamodule


def lightning_epoch_seconds(args) -> float:
    seed_everything(0, verbose=False)
    model, dm = make(args)
    report = Report()
    trainer = Trainer(
        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, callbacks=[report], precision=args.precision,
        accelerator="gpu" if args.device == "cuda" else "cpu",  # where the other two run
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return report.train_seconds / args.epochs


def _plain_fit(model, batches, val_batches, epochs: int, precision: str, device: str = "cpu") -> float:
    """The recipe by hand: Adam + one-cycle, per-epoch train loss/accuracy and a validation pass."""
    hp = model.hparams
    model.to(device)
    model.setup("fit")  # the memory layout; `model(x)` is the network's own forward
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, fused=True)

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    steps = epochs * sum(1 for _ in batches())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=steps, pct_start=0.25)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device), 0
        for x, y in batches():
            with autocast():
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=hp.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        model.eval()
        with torch.no_grad(), autocast():
            val_correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val_batches())
        _ = (loss_sum / seen).item(), int(correct) / seen, val_correct
    return (time.perf_counter() - start) / epochs


def plain_epoch_seconds(args) -> float:
    seed_everything(0, verbose=False)
    model, dm = make(args)
    batch_size = dm.hparams.batch_size
    dm.setup("fit")
    tx, ty, vx, vy = (t.to(args.device) for t in (dm.train_set.images, dm.train_set.labels, dm.val_set.images, dm.val_set.labels))

    def batches():
        order = torch.randperm(len(ty), device=args.device)
        for i in range(0, len(ty), batch_size):
            idx = order[i : i + batch_size]
            yield dm.to_inputs(tx.index_select(0, idx), augment=True), ty.index_select(0, idx)

    def val_batches():
        for i in range(0, len(vy), batch_size):
            yield dm.to_inputs(vx[i : i + batch_size]), vy[i : i + batch_size]

    return _plain_fit(model, batches, val_batches, args.epochs, args.precision, args.device)


def per_sample_epoch_seconds(args) -> float:
    seed_everything(0, verbose=False)
    model, dm = make(args)
    batch_size = dm.hparams.batch_size
    dm.prepare_data()
    distort = []
    if (a := dm.augment) is not None:  # what users write: torchvision's per-image affine distortion
        affine = transforms.RandomAffine(
            a.rotation, translate=(a.shift / 28, a.shift / 28), scale=(1 - a.scale, 1 + a.scale),
            shear=math.degrees(math.atan(a.shear)),
        )  # fmt: skip
        distort.append(transforms.RandomApply([affine], p=a.p))

    def images(*steps) -> MNIST:
        return MNIST(str(dm.files.root), train=True, transform=transforms.Compose([transforms.ToTensor(), *steps]))

    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(0)).tolist()
    # ToTensor gives [0, 1] pixels, which the model normalises itself.
    train = Subset(images(*distort), order[dm.hparams.val_size :])
    val = Subset(images(), order[: dm.hparams.val_size])
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=args.workers)
    val_loader = DataLoader(val, batch_size=batch_size, num_workers=args.workers)
    return _plain_fit(model, lambda: loader, lambda: val_loader, args.epochs, args.precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--model", choices=["dense", "cnn"], default="dense")
    parser.add_argument("--config", default=None, help="default: configs/<model>.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's max_epochs")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the per-sample recipe")
    parser.add_argument("--skip_per_sample", action="store_true")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default=None, help="default: what fit chooses here")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the Lightning and plain loops on the GPU")
    args = parser.parse_args()
    args.precision = args.precision or ("bf16-mixed" if native_bf16(args.device) else "32-true")
    if args.device == "cuda":
        args.skip_per_sample = True  # its loader decodes on the CPU: not a GPU figure
    skip_nvml_probe_without_gpu()  # as `python -m digits_lightning` does
    recipe = build(args)
    # As many epochs as the real fit, so that a fit's one-off costs weigh in the same proportion.
    args.epochs = args.epochs or recipe.trainer.max_epochs
    print(describe())
    print(f"precision: {args.precision}; {args.epochs} epochs per run")
    runs = {"lightning": lightning_epoch_seconds, "plain": plain_epoch_seconds}
    if not args.skip_per_sample:
        runs["per-sample"] = per_sample_epoch_seconds
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every variant alike
        for name, run in runs.items():
            times[name].append(run(args))
    med = {name: statistics.median(t) for name, t in times.items()}
    hp = recipe.datamodule.hparams
    steps = math.ceil((60_000 - hp.val_size) / hp.batch_size) + math.ceil(hp.val_size / hp.batch_size)
    print(f"{args.model} batch {hp.batch_size}: {steps} steps per epoch (training and validation)")
    for name, t in times.items():
        print(f"{args.model} {name:<10} {med[name]:6.2f} s/epoch  (runs: {', '.join(f'{x:.2f}' for x in t)})")
    print(f"{args.model} ratio lightning/plain      {med['lightning'] / med['plain']:.2f}  (target <= 1.15)")
    extra, step = (med["lightning"] - med["plain"]) / steps, med["plain"] / steps
    print(f"{args.model} Lightning's cost per step  {1000 * extra:.2f} ms over the plain loop's {1000 * step:.2f} ms")
    if "per-sample" in med:
        print(f"{args.model} ratio per-sample/lightning {med['per-sample'] / med['lightning']:.2f}  (speed-up of our data path)")


if __name__ == "__main__":
    main()
