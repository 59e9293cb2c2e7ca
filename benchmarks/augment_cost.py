"""What the file looks of the default augmentation (bold, low resolution, stretched to a square)
add to a training step of the default CNN, in CPU time of this process (so that other work on a
shared machine counts less than in wall time).

Times, per batch of 256 MNIST-sized images: the default CLI's augmentation (`defaults.DATA_DEFAULTS`), the same with the looks off
(today's distortion), and one optimisation step of the default CNN (forward, loss, backward,
Adam) for scale. The looks' share of a step is what they add to the training time.

    python benchmarks/augment_cost.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.hardware import describe  # noqa: E402
from digits_lightning.augment import Augment
from digits_lightning.defaults import DATA_DEFAULTS  # noqa: E402
from digits_lightning.models import CNNClassifier  # noqa: E402


def cpu_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeats):
            fn()
        best = min(best, (time.process_time() - start) / repeats)
    return 1000 * best / torch.get_num_threads()  # CPU time spread over the threads: per-core wall time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(describe())
    x = torch.rand(256, 1, 28, 28).pow(4)  # sparse bright strokes on black, roughly
    y = torch.randint(0, 10, (256,))
    new = DATA_DEFAULTS["data.augment"]
    old = Augment(p=0.5, bold=0.0, low_res=0.0, binary=0.0, square=0.0)
    model = CNNClassifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()

    t_new, t_old = cpu_ms(lambda: new(x.clone()), args.repeats), cpu_ms(lambda: old(x.clone()), args.repeats)
    t_step = cpu_ms(step, max(5, args.repeats // 5))
    print(f"per batch of 256, {args.threads} thread(s), CPU ms:")
    print(f"  distortion with the looks (default)  {t_new:6.2f}")
    print(f"  distortion without them (today)      {t_old:6.2f}")
    print(f"  a CNN training step (fwd+bwd+Adam)   {t_step:6.2f}")
    print(f"  the looks add {t_new - t_old:+.2f} ms a step: {100 * (t_new - t_old) / (t_step + t_old):+.1f}% of training time")


if __name__ == "__main__":
    main()
