"""Data that exists on every machine (digits, shapes, stdlib text, sets, teacher-student) and
readers for real data sets a user already has on disk."""

from .digits import load_digits_split, upsample
from .readers import DataFormatError, load_cifar10, load_mnist, read_cifar_batch, read_idx
from .registry import IMAGE_DATASETS, load_image_dataset
from .regression import load_teacher_student, make_teacher
from .sets import SET_DISTRIBUTIONS, SET_TARGETS, load_sets_split, make_sets
from .shapes import SHAPE_CLASSES, load_shapes_split, make_shapes
from .text import BYTE_VOCAB, TextCorpus, load_stdlib_corpus, sample_windows, stdlib_source_files
from .types import ImageDataset, TensorDataset

__all__ = [
    "BYTE_VOCAB", "DataFormatError", "IMAGE_DATASETS", "ImageDataset", "SET_DISTRIBUTIONS", "SET_TARGETS",
    "SHAPE_CLASSES", "TensorDataset", "TextCorpus", "load_cifar10", "load_digits_split", "load_image_dataset",
    "load_mnist", "load_sets_split", "load_shapes_split", "load_stdlib_corpus", "load_teacher_student",
    "make_sets", "make_shapes", "make_teacher", "read_cifar_batch", "read_idx", "sample_windows",
    "stdlib_source_files", "upsample",
]
