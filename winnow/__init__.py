"""winnow: curate raw text into a trained, evaluated language model, every step cached and traceable."""

__version__ = "0.1.0"
