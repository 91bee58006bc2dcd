"""distill-cli: distil Hugging Face checkpoints from the command line."""

__version__ = "0.1.0"
