"""Re-create the decode corpus (synthetic images; see README.md). Run from the repository root:
``python tests/data/decode-corpus/make.py``."""

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent


def tiff_with_rational_strip_offsets(side: int) -> bytes:
    """A little-endian grayscale TIFF whose StripOffsets (tag 273) is stored as a RATIONAL (type 5)."""
    pixels = bytes((i * 7) % 256 for i in range(side * side))
    short = [(256, side), (257, side), (258, 8), (259, 1), (262, 1), (277, 1), (278, side)]
    n = len(short) + 2
    ifd_end = 8 + 2 + 12 * n + 4
    rational_at, pixels_at = ifd_end, ifd_end + 8
    entries = [struct.pack("<HHIHH", tag, 3, 1, value, 0) for tag, value in short]
    entries.append(struct.pack("<HHII", 273, 5, 1, rational_at))
    entries.append(struct.pack("<HHII", 279, 4, 1, len(pixels)))
    entries.sort(key=lambda e: struct.unpack("<H", e[:2])[0])
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", n) + b"".join(entries) + struct.pack("<I", 0)
            + struct.pack("<II", pixels_at, 1) + pixels)


def texture(side: int) -> np.ndarray:
    return np.random.default_rng(side).integers(0, 255, (side, side, 3), np.uint8)


def main() -> None:
    (HERE / "tiff-stripoffsets-rational.tif").write_bytes(tiff_with_rational_strip_offsets(8))
    (HERE / "tiff-stripoffsets-rational-64.tif").write_bytes(tiff_with_rational_strip_offsets(64))
    buf = io.BytesIO()
    Image.fromarray(texture(64)).save(buf, format="PNG")
    (HERE / "png-truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(texture(64)).save(buf, format="JPEG")
    data = buf.getvalue()
    # an APP1 EXIF segment whose one tag (Make, ASCII) claims 1000 bytes at an offset past its end
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 1000, 0x7FFF0000)
    tiff += struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    (HERE / "ok-jpeg-broken-exif.jpg").write_bytes(data[:2] + app1 + data[2:])

if __name__ == "__main__":
    main()
