"""Whether a checkpoint fits the model it is loaded into: the same network, the same schedule."""

from __future__ import annotations

from typing import Any

import torch

from digits_lightning.errors import CheckpointError


def check_weights_fit(model: torch.nn.Module, checkpoint: dict[str, Any], path=None) -> None:
    """Refuses weights of another network or version before they are loaded into `model`."""
    expected, found = model.state_dict(), checkpoint.get("state_dict", {})
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    resized = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and hasattr(found[k], "shape") and found[k].shape != v.shape
    ]
    found_problems = (("missing", missing), ("unexpected", unexpected), ("other shapes:", resized))
    problems = [f"{what} {_some(keys)}" for what, keys in found_problems if keys]
    if problems:
        raise CheckpointError(
            f"{path or 'The checkpoint'} does not fit this {type(model).__name__} ({'; '.join(problems)}): it was"
            " trained with other model settings or by an incompatible version. Use the settings it was trained"
            " with (for `fit --ckpt_path last`: those of the interrupted run), or train anew."
        )


def check_schedule_fits(checkpoint: dict[str, Any], total_steps: float, path=None) -> None:
    """Refuses to resume a one-cycle schedule for another number of steps (it would fail past its end)."""
    saved = [s.get("total_steps") for s in checkpoint.get("lr_schedulers") or [] if isinstance(s, dict)]
    if saved and saved[0] is not None and saved[0] != total_steps:
        raise CheckpointError(
            f"{path or 'The checkpoint'} was trained under a one-cycle schedule of {saved[0]} steps, but this"
            f" run would take {total_steps}: resume with the trainer.max_epochs and data settings of the"
            " interrupted run."
        )


def _some(items: list[str], shown: int = 3) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")
