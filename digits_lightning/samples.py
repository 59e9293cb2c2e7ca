"""`python -m digits_lightning samples`: the grid of training images as a PNG, without training.

It takes the same `--data.*` options as `fit` and draws the images as `fit` would show them.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from digits_lightning.data import MNISTDataModule
from digits_lightning.defaults import DATA_DEFAULTS
from digits_lightning.errors import SettingError, user_error_in


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m digits_lightning samples", description="Write a grid of training images with their labels.",
        exit_on_error=False,
    )  # fmt: skip
    parser.add_class_arguments(MNISTDataModule, "data")
    parser.set_defaults(DATA_DEFAULTS)  # the same images as a `fit` with the same options
    parser.add_argument("--count", type=int, default=32, help="how many images (the first of the training split)")
    parser.add_argument("--out", type=str, default="samples.png", help="the PNG to write")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace --out if it exists")
    return parser


def main(args: list[str]) -> None:
    from digits_lightning import plots

    config = parser().parse_args(args)
    if config.count < 1:
        raise SettingError(f"--count must be at least 1, got {config.count}")
    if Path(config.out).exists() and not config.overwrite:
        raise SettingError(f"{config.out} already exists: pass another --out, or --overwrite true to replace it")
    try:
        data = parser().instantiate_classes(config).data
    except ValueError as err:
        mistake = user_error_in(err)
        if mistake is None:
            raise
        raise mistake from None
    images, labels = data.training_samples(config.count)
    names = data.class_names
    grid = plots.sample_grid(images.numpy(), [names[int(y)] for y in labels], augmented=data.augment is not None)
    print(f"Training samples: {plots.save_png(plots.render(grid), config.out)}")
