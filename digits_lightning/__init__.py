"""Read handwritten digits: MNIST training and batch prediction with PyTorch Lightning.

Nothing heavy is imported here, so `python -m digits_lightning --help` starts quickly.
"""

__version__ = "0.1.0"
