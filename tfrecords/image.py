"""One image file's bytes -> the RGB JPEG that goes into a record, or a reason to skip it.

The paper (Section 2): "we down-sampled the images to a fixed resolution of 256 x 256. Given a
rectangular image, we first rescaled the image such that the shorter side was of length 256,
and then cropped out the central 256 x 256 patch". The paper names no resampling filter; this
uses Pillow's BILINEAR, which widens its triangle kernel by the scale factor when shrinking
(an antialiased bilinear, as tf.image.resize(..., antialias=True)), applied in one step to the
central square (resize with a box), so nothing outside the crop is resampled.
"""

import dataclasses
import io
import math
import warnings
from typing import Optional

import numpy as np
from PIL import Image

RESIZE_FILTER = Image.Resampling.BILINEAR
# 4:2:0 chroma subsampling, as TF's encode_jpeg and most camera JPEGs; stated rather than left
# to Pillow's default so the bytes do not change with it.
JPEG_SUBSAMPLING = "4:2:0"
# Transparent pixels are shown on white, as a browser on a white page would show them.
BACKGROUND = (255, 255, 255)
# The most pixels an image may have (width x height, read from its header before decoding).
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS: 1024**3 // 4 // 3, about
# 89.5 MP, a 268 MB RGB image), which sits above the photos of any camera of ImageNet's years
# (2007-2010). A larger image is skipped, listed in skipped.txt; --max_image_pixels changes it.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# Pillow's own check (it raises at twice its threshold) is left to ours: off here.
Image.MAX_IMAGE_PIXELS = None


class SkipImage(Exception):
  """The file is not a usable image; str(e) is the reason written to skipped.txt."""


@dataclasses.dataclass(frozen=True)
class Converted:
  encoded: bytes        # an RGB JPEG
  height: int
  width: int
  pixels: np.ndarray    # uint8 [height, width, 3]: what the statistics are computed on


def _open(data: bytes) -> Image.Image:
  if not data:
    raise SkipImage("empty file")
  try:
    image = Image.open(io.BytesIO(data))
  except Image.UnidentifiedImageError:
    raise SkipImage("not an image (no known image format)") from None
  except Image.DecompressionBombError as e:
    raise SkipImage(f"too many pixels: {e}") from None
  except Exception as e:  # Pillow's plugins raise OSError, SyntaxError, ValueError, ...
    raise SkipImage(f"unreadable image header: {e}") from None
  return image


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode -> RGB. CMYK JPEGs (Adobe's inverted ones too) are undone by Pillow."""
  if image.mode == "RGB":
    return image
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
    # 16-bit grayscale PNG: keep the high byte (Pillow's convert would clip at 255).
    return Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8)).convert("RGB")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")


def convert(data: bytes, size: Optional[int], quality: int,
            max_pixels: int = MAX_IMAGE_PIXELS) -> Converted:
  """Decodes `data`, converts to RGB and (size given) resizes + centre-crops to size x size.

  Args:
    data: the file's bytes (JPEG, PNG, BMP, GIF (first frame), WebP, ... whatever its name).
    size: the output side: the shorter side is scaled to `size` and the central square is
      kept. None keeps the original pixels; an RGB JPEG is then stored as it came, anything
      else is re-encoded.
    quality: JPEG quality for every image that is (re-)encoded.
    max_pixels: images whose header declares more pixels are refused before decoding.

  Raises:
    SkipImage: empty, not an image, too many pixels, truncated or corrupt.
  """
  with warnings.catch_warnings():
    # Pillow warns (and libjpeg tolerates) on some damaged files; damage that loses pixels
    # raises below, the rest decodes as every JPEG reader would decode it.
    warnings.simplefilter("ignore")
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
      # Before any pixel is decoded: a 20000x20000 PNG of a few hundred kB would take 1.2 GB.
      raise SkipImage(f"too many pixels: {width}x{height} = {width * height:,} > the limit "
                      f"{max_pixels:,} (--max_image_pixels)")
    try:
      if size is not None and image.format == "JPEG":
        # Let libjpeg scale by 1/2, 1/4 or 1/8 in the DCT while the shorter side stays
        # >= size: much cheaper than decoding every pixel of a large photo.
        width, height = image.size
        scale = size / min(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
      image.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
      raise SkipImage(f"truncated or corrupt: {e}") from None
  if image.width < 1 or image.height < 1:
    raise SkipImage(f"image has no pixels ({image.width}x{image.height})")
  try:
    return _to_stored(image, data, size, quality)
  except Exception as e:  # decoded, but in a mode or size Pillow cannot take further
    raise SkipImage(f"cannot convert {image.mode} {image.width}x{image.height}: "
                    f"{type(e).__name__}: {e}") from None


def _to_stored(image: Image.Image, data: bytes, size: Optional[int],
               quality: int) -> Converted:
  keep_original = size is None and image.format == "JPEG" and image.mode == "RGB"
  rgb = _to_rgb(image)
  if size is not None:
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    rgb = rgb.resize((size, size), RESIZE_FILTER, box=(left, top, left + side, top + side))
  if keep_original:
    encoded = data
  else:
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    encoded = buffer.getvalue()
  return Converted(encoded=encoded, height=rgb.height, width=rgb.width,
                   pixels=np.asarray(rgb))
