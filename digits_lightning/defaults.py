"""The command lines' defaults that are not a class's own (`fit` and `samples` share them)."""

from __future__ import annotations

from digits_lightning.augment import Augment

# Without a config, training distorts half of the digits (any --model), to read people's
# handwriting, not only MNIST's. Configs say what they want (configs/dense.yaml: null, as the
# reference), and so may --data.augment null.
# A tenth of them are also stretched to fill their box, as scans of digits stretched to a square are
# read (chosen on the field corpus's validation files: benchmarks/field_corpus.py, docs/field_test.md).
DATA_DEFAULTS = {"data.augment": Augment(p=0.5, square=0.1)}
