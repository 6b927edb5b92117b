from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, load_masks, save_masks
from hyperprune.export.output_dir import atomic_output_dir, check_output_dir, write_json_atomic

__all__ = [
    "MASKS_FILE",
    "REPORT_FILE",
    "atomic_output_dir",
    "check_output_dir",
    "load_masks",
    "save_masks",
    "write_json_atomic",
]
