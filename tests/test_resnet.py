"""The residual network: its blocks, its settings, and a real `fit` of `configs/resnet.yaml`'s model
through the CLI on the tiny data set (the accuracy target itself is measured by
`benchmarks/time_to_accuracy.py`, not here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from digits_lightning.checkpoints import load_classifier
from digits_lightning.cli import main
from digits_lightning.errors import SettingError
from digits_lightning.models import ResNetClassifier
from digits_lightning.nets import ResidualBlock, ResNet
from tests.helpers import FIT

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "resnet.yaml"


def test_blocks_add_a_shortcut_and_project_where_the_shape_changes():
    same, down = ResidualBlock(8, 8), ResidualBlock(8, 16, stride=2)
    assert isinstance(same.shortcut, torch.nn.Identity) and not isinstance(down.shortcut, torch.nn.Identity)
    x = torch.randn(2, 8, 14, 14)
    assert same(x).shape == x.shape and down(x).shape == (2, 16, 7, 7)
    for module in same.body:  # the body outputs zero: the block passes its input on (through the ReLU)
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.zeros_(module.weight)
    same.eval()
    assert torch.equal(same(x), torch.relu(x))


def test_the_network_pools_globally_into_the_classes():
    net = ResNet((16, 32, 64), (1, 2, 1), classes=26)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 26)
    assert isinstance(net[-4], torch.nn.AdaptiveAvgPool2d)
    assert sum(isinstance(m, ResidualBlock) for m in net.modules()) == 4
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) > 4


def test_the_configs_model_has_the_documented_size():
    init = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    model = ResNetClassifier(channels=init["channels"], blocks=init["blocks"], stem_pool=init["stem_pool"])
    assert sum(p.numel() for p in model.parameters()) == 308_074  # docs/models.md's table
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"channels": (32, 64), "blocks": (1, 1, 1)}, "model.channels and model.blocks"),
     ({"blocks": (0, 0, 0)}, "one block in all"), ({"dropout": 1.0}, "model.dropout"),
     ({"convention": "sideways"}, "model.convention must be one of"), ({"tta": "rotations"}, "model.tta must be one of"),
     ({"final_lr": 1.5}, "model.final_lr is a share of model.lr")],
)  # fmt: skip
def test_wrong_settings_are_named(kwargs, words):
    with pytest.raises(SettingError, match=words):
        ResNetClassifier(**kwargs)


def test_fit_test_and_reload_through_the_cli(tiny_mnist, in_tmp, capsys, one_thread):
    main(["fit", "--config", str(CONFIG), *FIT[1:], f"--data.data_dir={tiny_mnist}", "--trainer.max_epochs=6",
          "--model.channels=[8, 16, 32]", "--data.augment=null", "--test_after_fit=true"])  # fmt: skip
    out = capsys.readouterr().out
    accuracy = float(out.split("Test accuracy: ")[1].split("%")[0])
    assert accuracy > 80  # 6 epochs of a tiny net on 1,000 rendered digits: learning, not a target
    (best,) = (in_tmp / "checkpoints" / "resnet").glob("epoch=*.ckpt")
    model = load_classifier(best)
    assert isinstance(model, ResNetClassifier) and list(model.hparams.channels) == [8, 16, 32]
    assert model.hparams.convention == "mnist" and model.hparams.class_names == tuple("0123456789")
    main(["test", "--model=ResNetClassifier", f"--data.data_dir={tiny_mnist}", "--trainer.enable_progress_bar=false"])
    assert f"Test accuracy: {accuracy:.2f}%" in capsys.readouterr().out  # the newest best of checkpoints/resnet


def test_tta_averages_the_probabilities_of_the_views_and_is_off_by_default():
    torch.manual_seed(0)
    model = ResNetClassifier(channels=(8, 16, 32)).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.evaluate(x), model(x))  # "none": the model's own logits
        model.hparams.tta = "shifts+mirror"
        probs = model.evaluate(x).softmax(dim=1)
        moved = torch.zeros_like(x)
        moved[..., 1:, :] = x[..., :-1, :]  # one row down, the top row background
        views = [x, moved, x.flip(-1)]
        assert torch.allclose(probs.sum(dim=1), torch.ones(4), atol=1e-5)
        assert not torch.allclose(probs, model(x).softmax(dim=1))
        from digits_lightning.models import TTA_VIEWS, _view

        assert len(TTA_VIEWS["shifts+mirror"]) == 10 and torch.equal(_view(x, 1, 0, False), moved)
        assert torch.equal(_view(x, 0, 0, True), views[2])
        expected = sum(model(_view(x, dy, dx, m)).softmax(dim=1) for dy, dx, m in TTA_VIEWS["shifts+mirror"]) / 10
        assert torch.allclose(probs, expected, atol=1e-6)
