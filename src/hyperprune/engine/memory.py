"""Peak resident memory of this process over a window of work."""

from __future__ import annotations

import os
import resource
import sys
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return lifetime_peak_rss_bytes()


def lifetime_peak_rss_bytes() -> int:
    """The process's RSS high-water mark. VmHWM belongs to this process's own memory map;
    ru_maxrss would also count the parent's RSS inherited across fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """Context manager measuring the peak RSS (and CUDA peak, if used) inside the window.

    The kernel's lifetime high-water mark is exact but only grows; when it did not grow
    during the window, a sampling thread's maximum is the best estimate.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_rss_bytes = 0
        self.peak_cuda_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled = max(self._sampled, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        self._lifetime_before = lifetime_peak_rss_bytes()
        self._sampled = current_rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sampled = max(self._sampled, current_rss_bytes())
        lifetime_after = lifetime_peak_rss_bytes()
        self.peak_rss_bytes = lifetime_after if lifetime_after > self._lifetime_before else self._sampled
        if torch.cuda.is_available():
            self.peak_cuda_bytes = int(torch.cuda.max_memory_allocated())


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_freed_memory() -> None:
    """Hand free heap pages back to the OS (glibc malloc_trim); a no-op elsewhere.
    Called after each streamed block, whose freed tensors would otherwise stay resident."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def return_freed_memory_to_os(threshold_bytes: int = 128 * 1024) -> bool:
    """Serve large allocations with mmap, so that freed blocks go back to the OS.

    glibc raises its mmap threshold each time a large mmapped chunk is freed; after that,
    a streamed block's tensors come from the heap and freeing them does not shrink the
    process, so peak RSS creeps up with depth (measured: +84 MB over 10 small blocks).
    A fixed threshold turns that off. Returns False where glibc's mallopt is unavailable.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
