"""tfrecords.image: every kind of file ImageNet (and the web) holds -> RGB JPEG, or a reason."""

import io

import numpy as np
from PIL import Image
import pytest

from tfrecords import image


def _bytes(picture: Image.Image, fmt="JPEG", **kwargs) -> bytes:
  buffer = io.BytesIO()
  picture.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _picture(width=320, height=240, seed=0) -> Image.Image:
  rng = np.random.default_rng(seed)
  low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
  return Image.fromarray(low).resize((width, height), Image.BICUBIC)


def _decoded(converted: image.Converted) -> Image.Image:
  decoded = Image.open(io.BytesIO(converted.encoded))
  assert decoded.format == "JPEG" and decoded.mode == "RGB"
  assert decoded.size == (converted.width, converted.height)
  return decoded


@pytest.mark.parametrize("kind", ["rgb", "cmyk", "gray", "png", "progressive", "rgba_png",
                                  "palette_gif", "bmp", "webp", "png16"])
def test_every_format_becomes_a_256_rgb_jpeg_with_its_colours(kind):
  picture = _picture()
  data = {
      "rgb": lambda: _bytes(picture, quality=95),
      "cmyk": lambda: _bytes(picture.convert("CMYK"), quality=95),
      "gray": lambda: _bytes(picture.convert("L"), quality=95),
      "png": lambda: _bytes(picture, "PNG"),
      "progressive": lambda: _bytes(picture, quality=95, progressive=True),
      "rgba_png": lambda: _bytes(picture.convert("RGBA"), "PNG"),
      "palette_gif": lambda: _bytes(picture.convert("P"), "GIF"),
      "bmp": lambda: _bytes(picture, "BMP"),
      "webp": lambda: _bytes(picture, "WEBP", quality=95),
      "png16": lambda: _bytes(Image.fromarray(
          np.asarray(picture.convert("L"), np.uint16) * 257), "PNG"),
  }[kind]()
  converted = image.convert(data, 256, 95)
  assert converted.pixels.shape == (256, 256, 3) and converted.pixels.dtype == np.uint8
  _decoded(converted)
  expected = np.asarray(picture.resize((256, 256), box=(40, 0, 280, 240)), np.float64)
  if kind in ("gray", "png16"):
    expected = np.repeat(np.asarray(picture.convert("L").resize(
        (256, 256), box=(40, 0, 280, 240)), np.float64)[..., None], 3, axis=2)
  error = np.abs(converted.pixels.astype(np.float64) - expected).mean()
  assert error < (12 if kind == "palette_gif" else 4), (kind, error)   # GIF: 256 colours


def test_transparent_pixels_are_shown_on_white():
  rgba = np.zeros((100, 100, 4), np.uint8)   # fully transparent black
  converted = image.convert(_bytes(Image.fromarray(rgba), "PNG"), 64, 95)
  assert converted.pixels.min() == 255


def test_the_central_square_is_kept_and_the_shorter_side_scaled():
  tall = np.zeros((900, 300, 3), np.uint8)
  tall[300:600] = (200, 30, 30)           # the central 300x300 square is red
  converted = image.convert(_bytes(Image.fromarray(tall), "PNG"), 256, 95)
  assert np.abs(converted.pixels[2:-2].astype(int) - (200, 30, 30)).max() <= 1
  # At the crop's edges the antialiasing kernel sees past it, as resizing the whole image to
  # 256x768 and cropping would.
  whole = np.asarray(Image.fromarray(tall).resize((256, 768), image.RESIZE_FILTER))
  assert np.abs(converted.pixels.astype(int) - whole[256:512]).max() <= 2
  big = image.convert(_bytes(_picture(2400, 1800), quality=90), 256, 95)   # draft path
  small = image.convert(_bytes(_picture(400, 300), quality=90), 256, 95)
  assert big.pixels.shape == small.pixels.shape == (256, 256, 3)
  assert np.abs(big.pixels.astype(int) - small.pixels).mean() < 6


def test_keep_originals_stores_rgb_jpegs_untouched():
  jpeg = _bytes(_picture(), quality=80)
  kept = image.convert(jpeg, None, 95)
  assert kept.encoded == jpeg and (kept.width, kept.height) == (320, 240)
  cmyk = image.convert(_bytes(_picture().convert("CMYK")), None, 95)
  assert cmyk.encoded != jpeg and _decoded(cmyk).size == (320, 240)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"ILSVRC2012 synsets\nn01440764 tench\n", "not an image"),
    (_bytes(_picture(), quality=90)[:1500], "truncated"),
    (b"BM" + b"\x00" * 60, "unreadable image header"),
])
def test_unusable_files_are_skipped_with_a_reason(data, reason):
  with pytest.raises(image.SkipImage, match=reason):
    image.convert(data, 256, 95)


def test_decompression_bombs_are_skipped(monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)    # 320x240 is > 2x that
  with pytest.raises(image.SkipImage, match="too many pixels"):
    image.convert(_bytes(_picture()), 256, 95)
