"""Opening images: every PIL mode mapped to 8-bit RGB correctly, and a pixel limit.

``Image.convert("RGB")`` clips 16- and 32-bit pixels to 255 (a 16-bit PNG becomes all white) and
drops transparency onto whatever colour the hidden pixels hold. Here:

- 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: PIL's own conversion.
- Modes with transparency (RGBA, LA, PA, P or L with a transparent colour): composited on white,
  as transformers' ``convert_to_rgb`` does.
- I;16 (16-bit grey): scaled by 255 / 65535.
- I (32-bit integer) and F (float): values in 0–255 are kept, 0–65535 scaled as 16-bit, and for F
  values in 0–1 scaled by 255; anything else (negative, larger) is refused, as there is no
  faithful 8-bit rendering to guess.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from superneurons.errors import DataError

# PIL's own default decompression-bomb limit (≈ 89 megapixels); `--max-pixels` changes it.
DEFAULT_MAX_PIXELS = 89_478_485


@contextmanager
def _pixel_limit(max_pixels: int):
    # PIL checks its module-wide limit while opening; ours is checked explicitly afterwards.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _scaled_to_uint8(image: Image.Image, where: str) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if values.size == 0:
        raise DataError(f"{where}: the image has no pixels")
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(values).all() or low < 0:
        raise DataError(
            f"{where}: mode {image.mode} pixels span {low:g}..{high:g}; "
            "only non-negative finite values map to 8-bit RGB"
        )
    if image.mode.startswith("I;16") or 255 < high <= 65535:
        scale = 255 / 65535
    elif high <= 1 and image.mode == "F":
        scale = 255.0
    elif high <= 255:
        scale = 1.0
    else:
        raise DataError(
            f"{where}: mode {image.mode} pixels reach {high:g}, beyond the 16-bit range; "
            "convert the image to 8 or 16 bits"
        )
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB, faithful for every mode (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scaled_to_uint8(image, where)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(
    source: str | Path | bytes | Image.Image,
    where: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Open, check and fully decode an image as 8-bit RGB.

    Errors are DataErrors naming ``where`` (default: the path): an unreadable or truncated file,
    more than ``max_pixels`` pixels, pixel values with no faithful 8-bit rendering, or a file in
    none of ``formats`` (Pillow's names, e.g. "PNG"; default: any Pillow reads).
    """
    where = where or (str(source) if isinstance(source, str | Path) else "image")
    try:
        with _pixel_limit(max_pixels):
            if isinstance(source, Image.Image):
                image = source
            elif isinstance(source, bytes | bytearray):
                image = Image.open(io.BytesIO(source), formats=formats)
            else:
                image = Image.open(source, formats=formats)
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(
                    f"{where}: {width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{max_pixels:,} (raise it with --max-pixels)"
                )
            image.load()
            return to_rgb(image, where)
    except DataError:
        raise
    except UnidentifiedImageError as error:
        kinds = f"no {', '.join(formats)} image" if formats else str(error)
        raise DataError(f"{where}: cannot read the image ({kinds})") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{where}: cannot read the image ({error})") from None
