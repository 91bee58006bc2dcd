"""Keep freed CPU memory for the next training step instead of handing it back to the OS.

glibc's defaults return freed heap to the OS and give allocations of a few MB fresh pages from
mmap, so each step's activations and loss buffers page-fault in again (zero-filled by the kernel).
On CPU that cost a fifth of a pretrain-distill step (bench/distill_step.py; docs/results.md).
Raising the trim and mmap thresholds keeps those pages mapped for reuse. Only glibc is touched;
CUDA memory is PyTorch's own caching allocator and unaffected.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory at the top of the heap
MMAP_THRESHOLD = 1 << 25  # serve blocks up to 32 MiB from the heap (glibc's largest default)


def keep_freed_memory() -> bool:
    """Set the thresholds for this process; True when the C library is glibc and took them."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(trim and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
