"""Test hooks for crash and resume tests: kill the process at a named point of a run.

Nothing here acts unless ``HYPERPRUNE_FAULT`` is set.
"""

from __future__ import annotations

import os
import signal
import time


def fault_point(index: int, phase: str) -> None:
    """Test hook: HYPERPRUNE_FAULT=<block>:<phase> kills the process there with SIGKILL, the way
    a crash or an OOM kill would; ``<block>:pause`` sleeps after that block's checkpoint instead,
    so a test can kill the process from outside at a moment of its choosing."""
    fault = os.environ.get("HYPERPRUNE_FAULT")
    if fault and fault == f"{index}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault and fault == f"{index}:pause" and phase == "after_checkpoint":
        time.sleep(600)
