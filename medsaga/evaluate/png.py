"""A minimal PNG writer: 8-bit RGB, no dependency beyond zlib.

PNG (ISO/IEC 15948) is a signature and chunks: IHDR (size, bit depth 8, colour type 2 = RGB),
IDAT (zlib stream of the rows, each preceded by its filter byte; 0 = no filter), IEND. Each
chunk is length, type, data and the CRC-32 of type and data. That is all an overlay needs, and
it saves the project a dependency on an imaging library.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode ``rgb`` ``(H, W, 3)`` uint8 as a PNG file's bytes."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: filter type 0 per row
    rows[:, 1:] = rgb.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + \
        _chunk(b"IEND", b"")


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write ``rgb`` ``(H, W, 3)`` uint8 to ``path`` (the caller makes it atomic)."""
    Path(path).write_bytes(png_bytes(rgb))


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG file's bytes (its IHDR chunk)."""
    if data[:8] != SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
