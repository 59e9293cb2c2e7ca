"""The command lines' defaults that are not a class's own (`fit` and `samples` share them)."""

from __future__ import annotations

from digits_lightning.augment import Augment

# Without a config, training distorts half of the digits (any --model), to read people's
# handwriting, not only MNIST's. Configs say what they want (configs/dense.yaml: null, as the
# reference), and so may --data.augment null.
DATA_DEFAULTS = {"data.augment": Augment(p=0.5)}
