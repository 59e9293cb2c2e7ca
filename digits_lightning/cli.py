"""`python -m digits_lightning fit|validate|test|predict|samples`: Lightning's own CLI, with our defaults.

Defaults live in the typed `__init__` signatures and in `configs/*.yaml`; this file only adds what
a CLI needs on top: per-model folders for checkpoints and logs, the test after `fit`, the data
set's class names handed to the model, the checkpoint's own data split at evaluation time, and
one line (exit status 2) for the user's mistakes. Our own bugs keep their traceback.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from digits_lightning.callbacks import HParams, Report, TestPictures, TrainingPictures
from digits_lightning.checkpoints import check_model_class, read_checkpoint
from digits_lightning.data import MNISTDataModule
from digits_lightning.datasets import SYMBOL_SETS
from digits_lightning.defaults import DATA_DEFAULTS
from digits_lightning.devices import native_bf16, skip_nvml_probe_without_gpu
from digits_lightning.errors import EXIT_USER_ERROR, CheckpointError, SettingError, UserError, fail, user_error_in
from digits_lightning.heap import keep_freed_memory
from digits_lightning.models import DigitClassifier
from digits_lightning.prediction import PredictionWriter, PredictThreads
from digits_lightning.results import NothingPredicted
from digits_lightning.resume import SeedEachEpoch

DEFAULT_MODEL = "digits_lightning.models.CNNClassifier"
# Subcommands of ours, beside Lightning's: each module's `main(args)` parses its own options.
OWN_COMMANDS = {"samples": "digits_lightning.samples", "export": "digits_lightning.export"}
# Lightning 2.6's data loops use a torch class (LeafSpec) that recent torch deprecates: news for
# Lightning's developers, printed to our users at every command.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
warnings.filterwarnings("ignore", "Precision .* is not supported by the model summary")


class _Quiet(logging.Filter):
    """Lines Lightning prints at every run that tell our users nothing about theirs."""

    NOISE = ("💡 Tip:", "Loading `train_dataloader` to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_Quiet())


class DigitsCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self._run = run
        given = sys.argv[1:] if args is None else args
        self._given = given[0] if run and given and given[0] in LightningCLI.subcommands() else None
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
                "callbacks": [Report(), SeedEachEpoch(), TrainingPictures(), TestPictures(), HParams(), PredictThreads()],
                "plugins": [{"class_path": "digits_lightning.checkpoints.AtomicCheckpointIO"}],
                # The data module shards the data itself under DDP (see data.py).
                "use_distributed_sampler": False,
            },
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "description": "Train digit classifiers on MNIST and read your own digit images.",
                "epilog": "Also: samples (a grid of training images), export (the model as ONNX), predict-onnx"
                " (predict from an ONNX model, without torch), serve (a page to draw on, and an HTTP API);"
                " each takes --help.",
            },
            seed_everything_default=42,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def subcommands(self) -> dict[str, set[str]]:
        """Lightning's subcommands, or only the one the arguments begin with: each is a parser of every
        Trainer, model and data option, and building the three unused ones took a fifth of a second."""
        every = LightningCLI.subcommands()
        return {self._given: every[self._given]} if self._given else every

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # Raise argument errors (main() prints them as one line) instead of printing the whole usage.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

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
        parser.set_defaults(DATA_DEFAULTS)
        parser.add_lightning_class_args(PredictionWriter, "prediction")
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
        at = next((i + 1 for i, a in enumerate(args) if a in self.subcommands()), None if self._run else 0)
        if at is not None and not _names_a_model(args):  # (without a subcommand the parser asks for one)
            args.insert(at, f"--model={DEFAULT_MODEL}")
        self.config = parser.parse_args(args)
        self._check_arguments()

    def _check_arguments(self) -> None:
        """Refuse what Lightning would accept silently or report with a traceback."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        epochs = config.trainer.max_epochs
        if subcommand == "fit" and epochs is not None and (epochs == 0 or epochs < -1):
            raise SettingError(f"trainer.max_epochs must be at least 1 (or -1 for no limit), got {epochs}")
        if subcommand != "fit" and config.get("ckpt_path") in (None, "", "best"):
            # ("best" means the best of a fit in this process to Lightning; to a user, the best checkpoint)
            config.ckpt_path = str(self._newest_checkpoint(config))
        if subcommand == "predict" and config.get("return_predictions") is None:
            config.return_predictions = False  # the writer streams them to disk; keeping them all grows without end
        ckpt = config.get("ckpt_path")
        if subcommand == "fit" and ckpt == "last":
            ckpt = _checkpoint_folder(config) / "last.ckpt"
            ckpt = str(ckpt) if ckpt.is_file() else None  # (Lightning says itself that there is none)
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not str(ckpt).startswith("registry:"):
            # Before LightningCLI reads the checkpoint's class and settings, which fails with a traceback.
            checkpoint = read_checkpoint(ckpt)
            check_model_class(ckpt, checkpoint, DigitClassifier)
            _use_checkpoint_split(subcommand, config, checkpoint, ckpt)

    @staticmethod
    def _newest_checkpoint(config) -> Path:
        """The newest best checkpoint of the chosen model (else its last.ckpt), for commands given none."""
        folder = _checkpoint_folder(config)
        best = sorted(folder.glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
        found = best[-1] if best else folder / "last.ckpt"
        if not found.is_file():
            raise CheckpointError(
                f"no checkpoint in {folder}: train one first (python -m digits_lightning fit), or pass --ckpt_path"
            )
        rank_zero_info(f"Using checkpoint {found} (the newest best in {folder}; choose another with --ckpt_path)")
        return found

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            mistake = user_error_in(err)
            if mistake is None:
                raise
            raise mistake from None

    def instantiate_trainer(self, **kwargs):
        trainer = self._get(self.config_init, "trainer", default={})
        bars = [c for c in trainer.get("callbacks") or [] if isinstance(c, ProgressBar)]
        if trainer.get("enable_progress_bar") is not False and not bars:
            # Lightning's default bar redraws after every step: a fifth of a dense-model epoch on a CPU.
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), TQDMProgressBar(refresh_rate=10)]
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit":  # the model learns the data set's classes and keeps their names
            symbols = SYMBOL_SETS[config.data.dataset]
            config.model.init_args.class_names = tuple(symbols.class_names)
            config.model.init_args.dataset_stats = tuple(symbols.stats)
            config.model.init_args.convention = symbols.convention
        if config.trainer.enable_checkpointing is False:
            # Our --checkpoint.* callback always exists, and Lightning refuses one beside this switch:
            # switched off, it stays and saves nothing.
            config.trainer.enable_checkpointing = True
            config.checkpoint.save_top_k, config.checkpoint.save_last = 0, False
        if config.checkpoint.dirpath is None:  # (a given one stays as written: it may be a URL)
            config.checkpoint.dirpath = str(_checkpoint_folder(config))
        logger = config.trainer.logger
        if self.subcommand == "predict":
            # A prediction writes its own files: no run folder, no config.yaml beside them.
            config.trainer.logger = False
            self.save_config_callback = None
        elif isinstance(logger, dict) or hasattr(logger, "init_args"):
            if logger.init_args.get("name") == "":
                logger.init_args["name"] = _model_name(config.model.class_path)
        if config.trainer.precision is None and self.subcommand != "predict" and native_bf16(config.trainer.accelerator):
            # Not chosen: mixed precision where the device computes bfloat16 natively (the default CNN
            # trains 20-45% faster on such a CPU, at the same accuracy). Prediction keeps full precision
            # for the probabilities it writes.
            config.trainer.precision = "bf16-mixed"
            rank_zero_info(
                "This device computes bfloat16 natively: running in bf16 mixed precision"
                " (--trainer.precision 32-true for full precision)"
            )
        if self.subcommand != "fit":
            # Only a resumed fit uses the checkpoint folder's bookkeeping; elsewhere its move is no news.
            warnings.filterwarnings("ignore", "The dirpath has changed from")
            # Nor does it need the callbacks that saved state in the checkpoint (weight averaging's),
            # which a config may still name: its state_dict holds the averaged weights already.
            warnings.filterwarnings("ignore", "Be aware that when using `ckpt_path`, callbacks used")
            warnings.filterwarnings("ignore", "You're using the WeightAveraging callback, but loading a checkpoint outside")

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit or self.trainer.fast_dev_run or self.trainer.interrupted:
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        if best:
            rank_zero_info(f"Best checkpoint: {best}")
        # A checkpoint saved under weight averaging (EMA, SWA) holds the averaged weights, the ones
        # validation chose; the callback, still attached, would load the raw weights kept beside them.
        self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, WeightAveraging)]
        warnings.filterwarnings("ignore", "Be aware that when using `ckpt_path`, callbacks used")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)

    def after_predict(self) -> None:
        writer = next((c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)), None)
        results = writer.results if writer is not None else None
        if results is not None and results.total and not results.predicted:
            raise NothingPredicted(
                f"none of the {results.total:,} images could be predicted: {results.paths['csv']} says why for each"
            )


SPLIT = ("val_size", "split_seed")


def _use_checkpoint_split(subcommand: str, config, checkpoint: dict, path) -> None:
    """Validate on the split the checkpoint was trained with, never on its own training images, and
    evaluate on the data set it learnt (another one given explicitly is refused).

    Where the command line leaves the split at its default, the checkpoint's is used; `validate` and a
    resumed `fit` refuse another one given explicitly. (`test` and `predict` use no split.)
    """
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    defaults = inspect.signature(MNISTDataModule).parameters
    dataset = saved.get("dataset", "mnist")  # (checkpoints of before other symbol sets: MNIST)
    if config.data.dataset != dataset:
        if config.data.dataset != defaults["dataset"].default:
            raise SettingError(
                f"{path} was trained on data.dataset={dataset}, not {config.data.dataset}: leave data.dataset out"
                " (the checkpoint's is used)"
            )
        if subcommand != "predict":
            rank_zero_info(f"Using the checkpoint's data.dataset={dataset}")
        config.data.dataset = dataset
    for key in SPLIT:
        if key not in saved or config.data[key] == saved[key]:
            continue
        if subcommand in ("validate", "fit") and config.data[key] != defaults[key].default:
            raise SettingError(
                f"{path} was trained with data.{key}={saved[key]}, so data.{key}={config.data[key]} would validate on"
                f" images it trained on: leave data.{key} out (the checkpoint's is used), or train anew"
            )
        if subcommand in ("validate", "fit"):
            rank_zero_info(f"Using the checkpoint's data.{key}={saved[key]}")
        config.data[key] = saved[key]


def _names_a_model(args: list[str]) -> bool:
    if any(a == "--model" or a.startswith("--model=") for a in args):
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


def _checkpoint_folder(config) -> Path:
    """`--checkpoint.dirpath`, else `checkpoints/<model name>`: each model keeps its own best and last."""
    return Path(config.checkpoint.dirpath or Path("checkpoints") / _model_name(config.model.class_path))


def _model_name(class_path: str) -> str:
    module, _, cls = class_path.rpartition(".")
    model = getattr(__import__(module, fromlist=[cls]), cls)
    return getattr(model, "name", cls.lower())


def run(args: list[str] | None = None) -> None:
    """One command, errors and all: ours (`samples`, ...) or Lightning's."""
    args = sys.argv[1:] if args is None else list(args)
    keep_freed_memory()
    if args and args[0] in OWN_COMMANDS:
        module = __import__(OWN_COMMANDS[args[0]], fromlist=["main"])
        module.main(args[1:])
        return
    skip_nvml_probe_without_gpu()
    DigitsCLI(args=args)


def main(args: list[str] | None = None) -> None:
    """Entry point. The user's mistakes end as one line on stderr and exit status 2; a prediction of
    which no file could be read ends with status 3; anything else keeps its traceback."""
    try:
        run(args)
    except NothingPredicted as err:
        fail(err)
    except MisconfigurationException as err:  # Lightning's word for settings it cannot run with
        hint = " (--trainer.accelerator auto uses a GPU where there is one, else the CPU)" if _names_gpu(str(err)) else ""
        sys.stderr.write(f"error: {_one_line(str(err))}{hint}\n")
        raise SystemExit(EXIT_USER_ERROR) from None
    except (UserError, ArgumentError) as err:
        sys.stderr.write(f"error: {_one_line(str(err))}\n")
        raise SystemExit(EXIT_USER_ERROR) from None


# Lines of jsonargparse's nested reports that only repeat the type information.
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Expected a path but")  # fmt: skip


def _names_gpu(message: str) -> bool:
    return any(word in message.lower() for word in ("gpu", "cuda", "mps", "accelerator"))


def _one_line(message: str) -> str:
    """An error message as one line; jsonargparse's nested reports cut down to their reason."""
    model = re.match(r'Parser key "model":', message)
    given = re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE)
    if model and given and "Given value type: <class 'str'>" in message and "dot import path" in message:
        names = " or ".join(f"--model {cls.__name__}" for cls in DigitClassifier.__subclasses__())
        return f"unknown model {given.group(1)!r}: use {names} (or the import path of a DigitClassifier subclass)"
    message = re.sub(r'^Parser key "([^"]+)":', r"--\1:", message)
    lines = [re.sub(r"^- ", "", line.strip()) for line in message.splitlines()]
    line = " ".join(line for line in lines if line and not line.startswith(_NOISE))
    # A model setting's report names the model's class and then the setting: name the option.
    return re.sub(r'^--model: Problem with given class_path \S+ Parser key "([^"]+)":', r"--model.\1:", line)


if __name__ == "__main__":
    main()
