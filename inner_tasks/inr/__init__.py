"""INR sets: one SIREN fitted per image (vmapped), stored as graph structure + sharded weights."""

from .fit import FitConfig, fit_sirens, images_to_targets, pixel_coords, psnr
from .generate import INRSetConfig, format_report, generate_inr_set, inr_seed
from .sources import SOURCES, load_source
from .store import FORMAT, done_shards, psnr_report, read_index

__all__ = [
    "FORMAT", "FitConfig", "INRSetConfig", "SOURCES", "done_shards", "fit_sirens", "format_report",
    "generate_inr_set", "images_to_targets", "inr_seed", "load_source", "pixel_coords", "psnr", "psnr_report",
    "read_index",
]
