"""Weight-space learning on stored model zoos: zoo I/O, external zoo readers, accuracy prediction."""

from .external import is_small_cnn_zoo, load_small_cnn_zoo
from .zoo_io import FORMAT_VERSION, Zoo, ZooFormatError, load_structure, load_zoo, save_structure

__all__ = [
    "FORMAT_VERSION", "Zoo", "ZooFormatError", "is_small_cnn_zoo", "load_small_cnn_zoo", "load_structure",
    "load_zoo", "save_structure",
]
