"""Every PIL mode becomes faithful 8-bit RGB; oversized and unreadable images are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from superneurons.data.images import open_rgb
from superneurons.errors import DataError

GREY = np.array([[0, 64], [128, 255]], dtype=np.uint8)  # the 8-bit picture every case encodes


def _rgb(image: Image.Image, tmp_path, suffix: str = ".png") -> np.ndarray:
    path = tmp_path / f"image{suffix}"
    image.save(path)
    return np.asarray(open_rgb(path))


@pytest.mark.parametrize(
    ("name", "build", "suffix"),
    [
        ("L", lambda: Image.fromarray(GREY, "L"), ".png"),
        ("I;16", lambda: Image.fromarray(GREY.astype(np.uint16) * 257), ".png"),
        ("I", lambda: Image.fromarray(GREY.astype(np.int32) * 257, "I"), ".tiff"),
        ("F in 0..1", lambda: Image.fromarray(GREY.astype(np.float32) / 255, "F"), ".tiff"),
        ("F in 0..255", lambda: Image.fromarray(GREY.astype(np.float32), "F"), ".tiff"),
        ("P", lambda: Image.fromarray(GREY, "L").convert("P"), ".png"),
        ("RGBA opaque", lambda: Image.fromarray(GREY, "L").convert("RGBA"), ".png"),
        ("CMYK", lambda: Image.fromarray(GREY, "L").convert("CMYK"), ".tiff"),
    ],
)
def test_each_mode_reads_as_the_same_grey_picture(tmp_path, name, build, suffix):
    image = build()
    rgb = _rgb(image, tmp_path, suffix)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], GREY, err_msg=name)


def test_a_16_bit_png_is_not_clipped_to_white(tmp_path):
    dark = Image.fromarray(np.full((4, 4), 8_000, dtype=np.uint16))  # 12 % grey in 16 bits
    assert np.asarray(dark.convert("RGB")).max() == 255  # what PIL's own conversion does
    assert (_rgb(dark, tmp_path) == round(8_000 * 255 / 65535)).all()


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    assert _rgb(rgba, tmp_path).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    one_bit = Image.fromarray(np.array([[True, False]]))
    assert _rgb(one_bit, tmp_path).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_values_without_an_8_bit_rendering_are_refused(tmp_path):
    negative = Image.fromarray(np.array([[-1.0, 2.0]], dtype=np.float32), "F")
    negative.save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match=r"f\.tiff: mode F pixels span -1\.\.2"):
        open_rgb(tmp_path / "f.tiff")


def test_the_pixel_limit_is_checked_before_decoding(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "big.png")
    with pytest.raises(
        DataError, match=r"big\.png: 40x30 = 1,200 pixels is over the limit of 1,000"
    ):
        open_rgb(tmp_path / "big.png", max_pixels=1000)
    assert open_rgb(tmp_path / "big.png", max_pixels=1200).size == (40, 30)


def test_an_unreadable_file_names_itself(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"x\.png: cannot read the image"):
        open_rgb(tmp_path / "x.png")
