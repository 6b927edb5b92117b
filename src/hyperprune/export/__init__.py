from hyperprune.export.checkpoint import MASKS_FILE, REPORT_FILE, load_masks, save_masks
from hyperprune.export.output_dir import atomic_output_dir, check_output_dir, write_json_atomic
from hyperprune.export.verify import VerifyResult, verify_checkpoint

__all__ = [
    "MASKS_FILE",
    "REPORT_FILE",
    "VerifyResult",
    "atomic_output_dir",
    "check_output_dir",
    "load_masks",
    "save_masks",
    "verify_checkpoint",
    "write_json_atomic",
]
