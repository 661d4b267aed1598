"""Handing freed memory back to the operating system, for the bounded-memory passes.

Both allocators a pass uses keep pages they have freed: Arrow's (mimalloc) until told, and glibc's
malloc wherever a freed block is not at the top of its heap. A reduce that works a budget's worth
at a time would otherwise stay as large as the most it ever held (measured, dedup's reduce at 1M
documents: 453 MB resident after its decisions, 257 MB with the pages handed back).
"""

from __future__ import annotations

import ctypes

import pyarrow as pa


def _malloc_trim() -> "ctypes._CFuncPtr | None":
    # glibc only: musl and macOS have no malloc_trim, and their allocators return memory themselves.
    # CDLL(None) is the process's own symbols (libc's among them); find_library would run ldconfig.
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_TRIM = _malloc_trim()


def release() -> None:
    """Return freed heap pages to the OS (a few ms; call between phases, not in inner loops)."""
    pa.default_memory_pool().release_unused()
    if _TRIM is not None:
        _TRIM(0)
