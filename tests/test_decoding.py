"""Tests of keras_alexnet.decoding: image bytes -> the stored 256x256 image, as the builder
stores it (real JPEG/PNG bytes from Pillow). decoding.header_pixels's limits are tested with
the served model's faults (tests/test_export_faults.py)."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from keras_alexnet import decoding

S = decoding.STORED_SIZE


def smooth_image(height, width):
  y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
  return (np.stack([y, x, 0.5 * (x + y)], -1) * 255).astype(np.uint8)


def pil_reference(image):
  """What the builder does: shorter side to 256 (antialiased bilinear), central 256 crop."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return np.asarray(Image.fromarray(image).resize(
      (S, S), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)))


def encode(image, fmt, mode=None):
  buf = io.BytesIO()
  pil = Image.fromarray(image)
  if mode:
    pil = pil.convert(mode)
  pil.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


@pytest.mark.parametrize("height,width,fmt,mode", [
    (300, 400, "JPEG", None), (512, 300, "PNG", None), (200, 180, "JPEG", None),
    (320, 300, "JPEG", "CMYK"), (300, 300, "PNG", "L")])
def test_decode_to_stored_matches_the_builders_resize_and_crop(height, width, fmt, mode):
  image = smooth_image(height, width)
  stored = decoding.decode_to_stored(encode(image, fmt, mode)).numpy()
  assert stored.shape == (S, S, 3) and stored.dtype == np.uint8
  reference = image if mode != "L" else np.asarray(Image.fromarray(image).convert("L").convert(
      "RGB"))
  reference = pil_reference(reference)
  if mode == "L":
    assert np.array_equal(stored[..., 0], stored[..., 1])
  tolerance = 6 if mode == "CMYK" else 3     # JPEG and CMYK->RGB round trips
  assert np.abs(stored.astype(float) - reference).mean() < tolerance


def test_decode_to_stored_keeps_256_images_as_decoded():
  image = np.random.default_rng(5).integers(0, 256, (S, S, 3), dtype=np.uint8)
  jpeg = tf.io.encode_jpeg(image).numpy()
  np.testing.assert_array_equal(decoding.decode_to_stored(jpeg).numpy(),
                                tf.io.decode_jpeg(jpeg, channels=3).numpy())


def test_decode_rejects_bytes_that_are_not_an_image():
  with pytest.raises(tf.errors.InvalidArgumentError):
    decoding.decode_to_stored(b"this is not an image")
