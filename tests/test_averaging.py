"""The moving average of the weights (`averaging.EMA`) through the real CLI, on the tiny data set."""

from __future__ import annotations

import pytest

from digits_lightning.cli import main
from tests.test_cli import fit_args


def accuracy(out: str) -> float:
    return float(out.split("Test accuracy: ")[1].split("%")[0])


def test_a_short_run_under_the_average_learns_as_one_without_it(tiny_mnist, in_tmp, capsys):
    """24 steps (3 epochs of 8): a fixed decay of 0.998 would leave 95% of the average on the
    untrained weights (Lightning's `EMAWeightAveraging` scores near chance here); the decay that
    grows with the steps averages the trained ones."""
    main(fit_args(tiny_mnist, "--model=DenseClassifier", "--trainer.callbacks+=digits_lightning.averaging.EMA",
                  "--trainer.callbacks.decay=0.998"))  # fmt: skip
    assert accuracy(capsys.readouterr().out) > 60.0  # as the dense net without it (tests/test_cli.py)


def test_a_decay_out_of_range_is_one_line(tiny_mnist, in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(tiny_mnist, "--model=DenseClassifier", "--trainer.callbacks+=digits_lightning.averaging.EMA",
                      "--trainer.callbacks.decay=1.5"))  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "EMA's decay must be between 0 and 1, got 1.5" in err and err.count("\n") == 1


def test_a_checkpoint_under_the_average_tests_with_its_config_and_no_warning(tiny_mnist, in_tmp, capsys, recwarn):
    """`test --config configs/resnet.yaml --ckpt_path ...` names the averaging callback again, outside
    a fit: the checkpoint's weights are the averaged ones already, and no warning says otherwise."""
    main(fit_args(tiny_mnist, "--model=DenseClassifier", "--trainer.callbacks+=digits_lightning.averaging.EMA"))
    after_fit = accuracy(capsys.readouterr().out)
    (best,) = (in_tmp / "checkpoints" / "dense").glob("epoch=*.ckpt")
    recwarn.clear()
    main(["test", f"--data.data_dir={tiny_mnist}", f"--ckpt_path={best}", "--trainer.enable_progress_bar=false",
          "--trainer.callbacks+=digits_lightning.averaging.EMA"])  # fmt: skip
    assert accuracy(capsys.readouterr().out) == after_fit
    assert not [w for w in recwarn if "WeightAveraging" in str(w.message) or "callbacks used" in str(w.message)]
