"""Reading face images safely, and turning them into the encoder's input.

Input images are aligned face crops (like the LFW pack). Any mode PIL reads
works: grayscale, RGBA, palette, 16-bit, EXIF-rotated. Bad files raise
:class:`InvalidImageError` with the reason; nothing is half-read.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from PIL import WebPImagePlugin  # noqa: F401 - registered up front: Image.open of bytes tries the formats Pillow
# pre-loads (BMP, GIF, JPEG, PPM, PNG) and imports all of its ~40 other plug-ins (~50 ms) for anything else

from facesearch.errors import InvalidImageError
from facesearch.names import has_surrogates, printable

#: largest image accepted, in pixels (decompression-bomb guard); 40 MP
MAX_PIXELS = 40_000_000
#: largest file accepted, in bytes
MAX_FILE_BYTES = 64 * 1024 * 1024
#: the shortest side an input may have: below it no face can be seen at the models' 112 px input
MIN_SIDE = 24
#: the widest aspect ratio (long side / short side) an input may have (a photo wider than a panorama is not
#: a face image, and a 40000 x 1 strip would be stretched into one)
MAX_ASPECT = 10.0
#: an input whose brightness varies less than this (standard deviation, 0-255) shows nothing: a blank,
#: black or single-colour image
MIN_CONTRAST = 2.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm"}


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # H x W x 3 uint8, RGB, EXIF orientation applied
    sha256: str  # of the file's bytes


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if has_surrogates(str(p)):  # its bytes are not UTF-8: it could be read, but not stored or shown as given
        raise InvalidImageError(printable(str(p)), "the file name is not valid UTF-8 text (bytes in another "
                                                   "encoding?); rename the file")
    if not p.exists():
        raise InvalidImageError(p, "no such file")
    if not p.is_file():
        raise InvalidImageError(p, "not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise InvalidImageError(p, "empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise InvalidImageError(p, f"file too large ({size} bytes, limit {MAX_FILE_BYTES})")
    return p.read_bytes()


def decode(data: bytes, name: str = "<bytes>", check: bool = True) -> np.ndarray:
    """Decode image bytes to an H x W x 3 uint8 RGB array, or raise InvalidImageError.

    Whatever the decoder raises on a crafted or damaged file (Pillow's plug-ins raise ``TypeError``,
    ``KeyError``, ``struct.error``... on odd tags) becomes an InvalidImageError for this file only, and its
    warnings (a broken EXIF block) are not printed. With ``check`` the image must be able to hold a face
    (:func:`check_usable`)."""
    name = printable(str(name))
    if not data:
        raise InvalidImageError(name, "empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings about a file's metadata: not the user's concern
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise InvalidImageError(name, f"image too large ({img.width}x{img.height} pixels, limit "
                                              f"{MAX_PIXELS}); possible decompression bomb")
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block must not lose the image
                pass
            pixels = _to_rgb(img)
        except InvalidImageError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise InvalidImageError(name, f"refused as a possible decompression bomb ({e})") from e
        except Image.UnidentifiedImageError as e:
            raise InvalidImageError(name, "not an image file PIL can read") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InvalidImageError(name, f"truncated or corrupt image ({e})") from e
        except MemoryError as e:
            raise InvalidImageError(name, "image too large to decode in memory") from e
        except Exception as e:  # noqa: BLE001 - any decoder failure is this file's, never the caller's
            raise InvalidImageError(name, f"the image decoder failed on it ({type(e).__name__}: {e})") from e
    if check:
        check_usable(pixels, name)
    return pixels


def check_usable(pixels: np.ndarray, name: str = "<image>") -> None:
    """Refuse an image that cannot hold a recognisable face: a side under :data:`MIN_SIDE` pixels, an
    aspect ratio over :data:`MAX_ASPECT`, or brightness that hardly varies (:data:`MIN_CONTRAST`)."""
    h, w = pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(name, f"image too small to hold a face ({w}x{h} pixels; at least {MIN_SIDE} "
                                      "on each side)")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise InvalidImageError(name, f"not a face image: {w}x{h} pixels is more than {MAX_ASPECT:g} times as "
                                      "wide as it is high, or the reverse")
    step = max(1, int(np.sqrt(h * w / 65536)))  # ~64k pixels are plenty to tell
    sample = pixels[::step, ::step].astype(np.float32)
    luma = sample @ np.array([0.299, 0.587, 0.114], np.float32)
    if float(luma.std()) < MIN_CONTRAST:
        raise InvalidImageError(name, f"the image is nearly uniform (brightness varies by {luma.std():.1f} of "
                                      f"255, less than {MIN_CONTRAST:g}): no face can be seen in it")


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def from_array(image, name: str = "<array>") -> np.ndarray:
    """Pixels given in memory, as H x W x 3 uint8 RGB: a numpy array (H x W x 3 uint8 RGB, e.g. a video frame
    converted from BGR; or H x W uint8 grayscale) or a ``PIL.Image`` (any mode PIL reads). Anything else is
    an InvalidImageError, as is an image that cannot hold a face (:func:`check_usable`)."""
    if isinstance(image, Image.Image):
        try:
            pixels = _to_rgb(image)
        except Exception as e:  # noqa: BLE001 - a PIL image in an odd mode is this input's problem
            raise InvalidImageError(name, f"cannot use this PIL image ({image.mode}: {e})") from e
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise InvalidImageError(name, f"an array must be H x W x 3 uint8 RGB (or H x W uint8 gray); got shape "
                                          f"{image.shape}, dtype {image.dtype}")
        pixels = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else np.ascontiguousarray(image)
    else:
        raise InvalidImageError(name, f"not an image input: {type(image).__name__} (give a path, bytes, an H x W x 3 "
                                      "uint8 RGB numpy array or a PIL.Image)")
    check_usable(pixels, name)
    return pixels


def unlike_a_crop(pixels: np.ndarray, input_size: int) -> str | None:
    """Why an image given as an aligned face crop does not look like one, or None: much larger than the
    model's input (a photo), or far from square (a crop is square or nearly: LFW's 1:1, ORL's 92 x 112)."""
    h, w = pixels.shape[:2]
    if max(h, w) > 3 * input_size:
        return f"{w}x{h} pixels: much larger than a face crop (the model sees {input_size} x {input_size})"
    if not 0.6 <= w / h <= 1.6:
        return f"{w}x{h} pixels: far from square, unlike an aligned face crop"
    return None


def png_bytes(pixels: np.ndarray) -> bytes:
    """H x W x 3 uint8 pixels as PNG bytes (what an image given in memory is stored and hashed as)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load(path: str | os.PathLike) -> LoadedImage:
    """Read and decode one image file; its SHA-256 identifies the content."""
    data = read_bytes(path)
    return LoadedImage(decode(data, str(path)), hashlib.sha256(data).hexdigest())


def crop_resize(pixels: np.ndarray, input_size: int, crop_fraction: float) -> np.ndarray:
    """Centre square crop (``crop_fraction`` of the shorter side) resized to input_size. uint8 in and out."""
    h, w = pixels.shape[:2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = pixels[top : top + side, left : left + side]
    if side == input_size:
        return np.ascontiguousarray(crop)
    img = Image.fromarray(crop).resize((input_size, input_size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def prepare(pixels: np.ndarray, config) -> np.ndarray:
    """The model's input for one image: 3 x S x S uint8 (normalisation happens inside the encoder)."""
    return crop_resize(pixels, config.input_size, config.crop_fraction).transpose(2, 0, 1).copy()
