"""crossreg: find corresponding anatomy across imaging modalities and register the images."""

__version__ = "0.1.0"
