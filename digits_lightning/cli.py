"""`python -m digits_lightning fit|validate|test|predict`: Lightning's own CLI, with our defaults.

Defaults live in the typed `__init__` signatures and in `configs/*.yaml`; this file only adds what
a CLI needs on top: per-model folders for checkpoints and logs, the test after `fit`, the
checkpoint's own data settings at evaluation time, and one-line errors instead of tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from digits_lightning.callbacks import Report
from digits_lightning.data import MNISTDataError, MNISTDataModule
from digits_lightning.models import DigitClassifier
from digits_lightning.resume import SeedEachEpoch

DEFAULT_MODEL = "digits_lightning.models.CNNClassifier"


class DigitsCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=DigitClassifier,
            subclass_mode_model=True,
            datamodule_class=MNISTDataModule,
            trainer_defaults={
                "max_epochs": 2,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "", "default_hp_metric": False},
                },
                "callbacks": [Report(), SeedEachEpoch()],
                "plugins": [{"class_path": "digits_lightning.checkpoints.AtomicCheckpointIO"}],
            },
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": "Train digit classifiers on MNIST and read your own digit images."},
            seed_everything_default=42,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "{epoch:02d}-{val_acc:.4f}",
            }
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="fit only: test the best checkpoint at the end"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse as Lightning does, choosing the CNN where neither the arguments nor a config name a model.

        (A parser default would not do: jsonargparse carries the default's init_args, such as the
        CNN's learning rate, over to a model chosen later with `--model`.)
        """
        if args is None:
            args = sys.argv[1:]
        if isinstance(args, dict):
            self.config = parser.parse_object(args)
            return
        args = list(args)
        if not _names_a_model(args):
            at = next((i + 1 for i, a in enumerate(args) if a in self.subcommands()), 0)
            args.insert(at, f"--model={DEFAULT_MODEL}")
        self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        name = _model_name(config.model.class_path)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(Path("checkpoints") / name)
        logger = config.trainer.logger
        if isinstance(logger, dict) or hasattr(logger, "init_args"):
            if logger.init_args.get("name") == "":
                logger.init_args["name"] = name
        ckpt = config.get("ckpt_path")
        if self.subcommand != "fit" and ckpt and Path(ckpt).is_file():
            # Evaluate with the inputs the model was trained on, whatever the command line says.
            saved = torch.load(ckpt, weights_only=True, map_location="cpu").get("datamodule_hyper_parameters", {})
            if "normalize" in saved and saved["normalize"] != config.data.normalize:
                rank_zero_info(f"Using the checkpoint's input normalisation: {saved['normalize']}")
                config.data.normalize = saved["normalize"]

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit or self.trainer.fast_dev_run or self.trainer.interrupted:
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        if best:
            rank_zero_info(f"Best checkpoint: {best}")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


def _names_a_model(args: list[str]) -> bool:
    if any(a.startswith("--model") for a in args):
        return True
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--config")]
    configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in configs:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # the parser reports unreadable configs itself
        if isinstance(loaded, dict) and (
            "model" in loaded or any(isinstance(v, dict) and "model" in v for v in loaded.values())
        ):
            return True
    return False


def _model_name(class_path: str) -> str:
    module, _, cls = class_path.rpartition(".")
    model = getattr(__import__(module, fromlist=[cls]), cls)
    return getattr(model, "name", cls.lower())


def main(args: list[str] | None = None) -> None:
    """Entry point; errors the user can fix end as one line on stderr and exit status 2."""
    try:
        DigitsCLI(args=args)
    except (MNISTDataError, ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
