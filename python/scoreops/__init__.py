"""scoreops: train, evaluate and serve self-correcting language models."""

__version__ = "0.1.0"
