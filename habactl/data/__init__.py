"""Data sources: embedded sets, torchvision folders, ImageFolder, HDF5 and npz files."""

from habactl.data.base import DataError, DataSource, LabeledImages
from habactl.data.registry import available_sources, load_source

__all__ = ["DataError", "DataSource", "LabeledImages", "available_sources", "load_source"]
