"""Pure image functions shared by training, evaluation and export.

The input pipeline (keras_alexnet.dataset) delivers uint8 256x256x3 batches; everything after
that happens here, on the accelerator, inside the step that runs the model:

- `augment`: the paper's training-time augmentation (section 4.1): a random 224x224 patch and
  its horizontal reflection, PCA lighting, minus the training mean, as float32.
- `center_crop` and `ten_views`: the evaluation crops (section 4.1: "the four corner patches
  and the center patch as well as their horizontal reflections (hence ten patches in all)").
- `decode_to_stored` and `serving_preprocess`: raw image bytes -> the stored 256x256 image ->
  the evaluation crop, so that an exported model and the evaluation cannot drift.

Pixel values are on the 0..255 scale throughout.
"""

import dataclasses
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from keras_alexnet import dataset_info

IMAGE_SIZE = 224   # Section 4.1: "random 224x224 patches".
STORED_SIZE = 256  # Section 2: shorter side rescaled to 256, central 256x256 patch.
MAX_OFFSET = STORED_SIZE - IMAGE_SIZE    # 32: crops start at 0..32, 33 positions per axis.
CENTER_OFFSET = MAX_OFFSET // 2          # 16.
# The most pixels (width x height, from the header) an image to decode may have: Pillow's
# decompression-bomb threshold, as the builder's (tfrecords/image.py says why). Bounds the
# memory a request takes: at most 3 bytes a pixel for the decoded image (~268 MB).
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3

# The published ImageNet statistics, used when a dataset carries none. Source:
# facebookarchive/fb.resnet.torch, datasets/imagenet.lua ("meanstd" and "pca"), on the 0..1
# scale there: mean (0.485, 0.456, 0.406); PCA eigval (0.2175, 0.0188, 0.0045) with the
# eigenvectors as columns of eigvec. Here both are multiplied by 255 (MXNet/GluonCV ship
# the same eigenvalues as 55.46, 4.794, 1.148).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_EIGENVALUES = (55.4625, 4.794, 1.1475)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# Section 4.1: alpha_i "drawn from a Gaussian with mean zero and standard deviation 0.1".
PCA_STDDEV = 0.1

MEANS = ("per_pixel", "per_channel")
# Philox by name: "auto_select" picks a different generator under XLA, so the same seed would
# give other crops in a jit-compiled step than eagerly.
RNG = "philox"
_UNIFORM_STEPS = 1 << 24   # float32 resolution of the uniform draws behind alpha.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Which parts of the paper's augmentation `augment` applies. Defaults: all of them."""
  random_crop: bool = True   # False: the centre crop.
  mirror: bool = True
  pca_lighting: bool = True
  mean: str = "per_pixel"    # "per_pixel" (the paper's mean image) or "per_channel".

  def __post_init__(self):
    _check_mean(self.mean)


@dataclasses.dataclass(frozen=True, eq=False)
class Statistics:
  """Training-set statistics, 0..255 scale.

  eigenvalues are the amplitudes lambda_i of the paper's lighting term sum alpha_i lambda_i p_i
  (section 4.1) in 0..255 pixel units: the eigenvalues of the RGB covariance computed on the
  0..1 scale, times 255 (see `statistics_from_dataset_info`). eigenvectors holds p_i as columns.
  """
  mean_image: Optional[np.ndarray]  # [256, 256, 3] float32, or None: per-channel only.
  mean_rgb: np.ndarray              # [3]
  eigenvalues: np.ndarray           # [3], descending
  eigenvectors: np.ndarray          # [3, 3], column i belongs to eigenvalue i
  source: str = "dataset_info"      # Where the numbers came from, for logs and config.json.


def imagenet_statistics() -> Statistics:
  """The published ImageNet mean and PCA (no per-pixel mean image)."""
  return Statistics(
      mean_image=None,
      mean_rgb=np.array(IMAGENET_MEAN_RGB, np.float32),
      eigenvalues=np.array(IMAGENET_EIGENVALUES, np.float32),
      eigenvectors=np.array(IMAGENET_EIGENVECTORS, np.float32),
      source="published ImageNet values (fb.resnet.torch)")


def statistics_from_dataset_info(data_dir: str) -> Statistics:
  """The mean and lighting PCA of the dataset in `data_dir`, from its dataset_info.json.

  The builder writes the RGB covariance of the training pixels on the 0..255 scale and its
  eigen-pairs. The paper's lighting term alpha_i * lambda_i (section 4.1) is not invariant to
  the pixel scale (lambda is a variance); the published ImageNet eigenvalues, and the
  implementations that reproduce the paper with them, evaluate it on the 0..1 scale. So the
  shift in 0..255 units is 255 * alpha_i * (lambda_i / 255^2) = alpha_i * lambda_i / 255,
  and `Statistics.eigenvalues` holds lambda_i / 255.

  Falls back to the published ImageNet values, saying so in the log, for whatever the dataset
  does not have (no dataset_info.json, no PCA, no mean). Raises ValueError naming the field when
  a statistic is present but malformed.
  """
  info = dataset_info.read(data_dir)
  path = os.path.join(data_dir, dataset_info.FILENAME)
  published = imagenet_statistics()
  if info is None or info.get("format") == "tfds" or "name" in info and "format" not in info:
    logging.warning("%s has no pixel statistics; using the %s for the mean and PCA lighting.",
                    data_dir, published.source)
    return published
  fallbacks = []

  mean_rgb = info.get("mean_rgb")
  if mean_rgb is None:
    mean_rgb = published.mean_rgb
    fallbacks.append("mean_rgb")
  else:
    mean_rgb = _array(path, "mean_rgb", mean_rgb, (3,))
    if np.any(mean_rgb < 0) or np.any(mean_rgb > 255):
      raise ValueError(f"{path}: mean_rgb must lie in 0..255 (uint8 RGB); found {mean_rgb}.")

  try:
    mean_image = dataset_info.read_mean_image(data_dir, info)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read the mean image {info.get('mean_image')!r}: {e}") from e
  if mean_image is None:
    fallbacks.append("mean_image (per-pixel mean; the per-channel mean is used instead)")
  else:
    if mean_image.shape != (STORED_SIZE, STORED_SIZE, 3) or not np.all(np.isfinite(mean_image)):
      raise ValueError(
          f"{path}: the mean image must be finite float [{STORED_SIZE}, {STORED_SIZE}, 3], the "
          f"size of the stored images; found shape {mean_image.shape}.")

  has = [k in info and info[k] is not None for k in ("eigenvalues", "eigenvectors")]
  if not any(has):
    eigenvalues, eigenvectors = published.eigenvalues, published.eigenvectors
    fallbacks.append("eigenvalues/eigenvectors (PCA lighting)")
  elif not all(has):
    raise ValueError(f"{path}: has only one of eigenvalues/eigenvectors; PCA lighting needs both "
                     "(or neither, for the published ImageNet values).")
  else:
    covariance_eigenvalues = _array(path, "eigenvalues", info["eigenvalues"], (3,))
    eigenvectors = _array(path, "eigenvectors", info["eigenvectors"], (3, 3))
    _check_pca(path, covariance_eigenvalues, eigenvectors, info.get("rgb_covariance"))
    eigenvalues = covariance_eigenvalues / 255.0

  source = f"{path}"
  if fallbacks:
    logging.warning("%s lacks %s; using the %s for those.", path, ", ".join(fallbacks),
                    published.source)
    source += f" (published ImageNet values for: {', '.join(f.split(' ')[0] for f in fallbacks)})"
  return Statistics(mean_image=mean_image, mean_rgb=np.asarray(mean_rgb, np.float32),
                    eigenvalues=np.asarray(eigenvalues, np.float32),
                    eigenvectors=np.asarray(eigenvectors, np.float32), source=source)


def _array(path, name, value, shape):
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    array = None
  if array is None or array.shape != shape or not np.all(np.isfinite(array)):
    raise ValueError(f"{path}: {name} must be finite numbers of shape {list(shape)}; "
                     f"found {value!r}.")
  return array


def _check_pca(path, eigenvalues, eigenvectors, covariance):
  """Eigenvalues >= 0 and descending, eigenvectors orthonormal, and (if the covariance is
  there) C p_i = lambda_i p_i: catches square-rooted values and transposed eigenvectors."""
  if np.any(eigenvalues < 0) or np.any(np.diff(eigenvalues) > 1e-6 * max(eigenvalues[0], 1)):
    raise ValueError(f"{path}: eigenvalues must be >= 0 and descending; found "
                     f"{eigenvalues.tolist()}.")
  if not np.allclose(eigenvectors.T @ eigenvectors, np.eye(3), atol=1e-3):
    raise ValueError(f"{path}: eigenvectors must be orthonormal columns; found "
                     f"{eigenvectors.tolist()}.")
  if covariance is not None:
    covariance = _array(path, "rgb_covariance", covariance, (3, 3))
    residual = covariance @ eigenvectors - eigenvectors * eigenvalues
    if np.abs(residual).max() > 1e-3 * max(np.abs(covariance).max(), 1e-6) + 1e-6:
      raise ValueError(
          f"{path}: eigenvalues/eigenvectors are not the eigen-pairs of rgb_covariance (column i "
          "of eigenvectors must satisfy C p_i = lambda_i p_i, lambda the covariance's eigenvalues "
          "on the 0..255 scale).")


def _check_mean(mean):
  if mean not in MEANS:
    raise ValueError(f"mean must be one of {MEANS}; received {mean!r}.")


def _check_batch(images, name="images"):
  shape = images.shape
  if images.dtype != tf.uint8 or shape.rank != 4 or tuple(shape[1:]) != (STORED_SIZE,
                                                                         STORED_SIZE, 3):
    raise ValueError(f"{name} must be a uint8 batch [B, {STORED_SIZE}, {STORED_SIZE}, 3] (the "
                     f"input pipeline's output); received {images.dtype.name} {shape}.")


def _mean_image(stats: Statistics, mean: str) -> tf.Tensor:
  """The mean to subtract, [256, 256, 3] or [1, 1, 3], float32."""
  _check_mean(mean)
  if mean == "per_pixel" and stats.mean_image is not None:
    return tf.constant(stats.mean_image, tf.float32)
  return tf.constant(np.reshape(stats.mean_rgb, (1, 1, 3)), tf.float32)


def augment(images, stats: Statistics, config: AugmentConfig = AugmentConfig(),
            seed=(0, 0)) -> tf.Tensor:
  """The paper's training augmentation (section 4.1) of a uint8 [B, 256, 256, 3] batch.

  Per image, from stateless random ops seeded by `seed` (int32/int64 [2]; fold the step and the
  replica id into it): a random 224x224 patch (offsets uniform in 0..32), mirrored with
  p = 0.5, plus sum_i alpha_i lambda_i p_i with alpha_i ~ N(0, 0.1), minus the training mean
  (the mean image cropped and mirrored with the image, or the per-channel mean).

  The crop and the mirror together are two batched gathers (rows, then reversed-or-not
  columns), which XLA compiles; with jit_compile they run about 4x faster than a map_fn of
  tf.image.crop_to_bounding_box (BUILD_NOTES.md, "Input pipeline").

  Returns float32 [B, 224, 224, 3].
  """
  images = tf.convert_to_tensor(images)
  _check_batch(images)
  offsets, mirrored, alpha = _draws(tf.shape(images)[0], config, seed)
  rows, cols = _crop_indices(offsets, mirrored)
  crops = tf.cast(_gather_crops(images, rows, cols), tf.float32)
  return _finish(crops, rows, cols, alpha, stats, config)


def augment_offsets(batch_size, config: AugmentConfig = AugmentConfig(), seed=(0, 0)):
  """The int32 [B, 2] (y, x) crop offsets `augment` draws for this seed."""
  return _draws(batch_size, config, seed)[0]


def augment_crops(crops, offsets, stats: Statistics, config: AugmentConfig = AugmentConfig(),
                  seed=(0, 0)) -> tf.Tensor:
  """`augment` for windows already cut on the CPU (dataset.DataConfig.decode_crop): uint8
  [B, 224, 224, 3] crops taken at int32 [B, 2] (y, x) offsets of the 256x256 images. The
  mirror, the PCA lighting and the mean (cropped at the same offsets) as `augment` with the
  same seed: given the offsets augment would draw, the result is augment's, exactly.

  Returns float32 [B, 224, 224, 3].
  """
  crops = tf.convert_to_tensor(crops)
  shape = crops.shape
  if crops.dtype != tf.uint8 or shape.rank != 4 or tuple(shape[1:]) != (IMAGE_SIZE,
                                                                         IMAGE_SIZE, 3):
    raise ValueError(f"crops must be a uint8 batch [B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] (the "
                     f"decode_crop pipeline's output); received {crops.dtype.name} {shape}.")
  offsets = tf.convert_to_tensor(offsets, tf.int32)
  _, mirrored, alpha = _draws(tf.shape(crops)[0], config, seed)
  rows, cols = _crop_indices(offsets, mirrored)
  # The crop's own columns, reversed where mirrored: cols minus the crop's x offset.
  local = cols - offsets[:, 1:2]
  crops = tf.cast(tf.gather(crops, local, axis=2, batch_dims=1), tf.float32)
  return _finish(crops, rows, cols, alpha, stats, config)


def _draws(batch, config: AugmentConfig, seed):
  """(offsets [B, 2], mirrored [B], alpha [B, 3] or None) from `seed`, per image."""
  seed = tf.convert_to_tensor(seed)
  if seed.dtype not in (tf.int32, tf.int64) or not seed.shape.is_compatible_with([2]):
    raise ValueError(f"seed must be an int32/int64 tensor of shape [2]; received {seed.dtype.name}"
                     f" {seed.shape}.")
  crop_seed, mirror_seed, pca_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3, alg=RNG))

  if config.random_crop:
    offsets = tf.random.stateless_uniform([batch, 2], crop_seed, minval=0,
                                          maxval=MAX_OFFSET + 1, dtype=tf.int32, alg=RNG)
  else:
    offsets = tf.fill([batch, 2], CENTER_OFFSET)
  if config.mirror:
    mirrored = tf.random.stateless_uniform([batch], mirror_seed, minval=0, maxval=2,
                                           dtype=tf.int32, alg=RNG) == 1
  else:
    mirrored = tf.zeros([batch], tf.bool)
  alpha = None
  if config.pca_lighting:
    # N(0, 0.1) by the inverse CDF of uniform integers: XLA turns random bits into floats
    # and normals differently from TF's kernels, and eager and compiled steps must agree.
    bits = tf.random.stateless_uniform([batch, 3], pca_seed, minval=0, maxval=_UNIFORM_STEPS,
                                       dtype=tf.int32, alg=RNG)
    uniform = (tf.cast(bits, tf.float32) + 0.5) / _UNIFORM_STEPS
    alpha = PCA_STDDEV * tf.math.ndtri(uniform)
  return offsets, mirrored, alpha


def _finish(crops, rows, cols, alpha, stats, config):
  """float32 crops minus the mean (the mean image at the crops' rows and columns), plus the
  lighting shift."""
  mean = _mean_image(stats, config.mean)
  if mean.shape[0] == STORED_SIZE:
    # The mean image cropped (and mirrored) exactly as each image was.
    mean = tf.gather(tf.gather(mean, rows), cols, axis=2, batch_dims=1)
  crops -= mean
  if alpha is not None:
    crops += lighting(alpha, stats)[:, None, None, :]
  return crops


def lighting(alpha, stats: Statistics) -> tf.Tensor:
  """The RGB shift sum_i alpha_i lambda_i p_i (section 4.1) for alpha [B, 3] -> [B, 3]."""
  eigenvalues = tf.constant(stats.eigenvalues, tf.float32)
  eigenvectors = tf.constant(stats.eigenvectors, tf.float32)
  return tf.linalg.matmul(alpha * eigenvalues, eigenvectors, transpose_b=True)


def _crop_indices(offsets, mirrored):
  """Row and column indices [B, 224] of each crop, the columns reversed where mirrored."""
  steps = tf.range(IMAGE_SIZE, dtype=tf.int32)
  rows = offsets[:, 0:1] + steps
  cols = offsets[:, 1:2] + tf.where(mirrored[:, None], IMAGE_SIZE - 1 - steps, steps)
  return rows, cols


def _gather_crops(images, rows, cols):
  """images[b, rows[b]][:, cols[b]] for every b: two batched gathers (rows, then columns)."""
  images = tf.gather(images, rows, axis=1, batch_dims=1)
  return tf.gather(images, cols, axis=2, batch_dims=1)


def _crop(images, stats, mean, y, x, size=IMAGE_SIZE):
  """The mean-subtracted float32 crop at the static offset (y, x)."""
  crop = tf.cast(images[:, y:y + size, x:x + size, :], tf.float32)
  mean = _mean_image(stats, mean)
  if mean.shape[0] == STORED_SIZE:
    mean = mean[y:y + size, x:x + size, :]
  return crop - mean


def _check_size(size):
  if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= STORED_SIZE:
    raise ValueError(f"The crop size must be an integer in 1..{STORED_SIZE}; received {size!r}.")


def center_crop(images, stats: Statistics, mean: str = "per_pixel",
                size: int = IMAGE_SIZE) -> tf.Tensor:
  """The evaluation input: the centre 224x224 patch minus the mean. uint8 [B, 256, 256, 3] ->
  float32 [B, 224, 224, 3]. `mean` must be the one training used. Another `size` (a converted
  Caffe net's 227) starts at (256 - size) // 2, the integer division of Caffe's data layer."""
  images = tf.convert_to_tensor(images)
  _check_batch(images)
  _check_size(size)
  offset = (STORED_SIZE - size) // 2
  return _crop(images, stats, mean, offset, offset, size)


# Section 4.1: "the four corner patches and the center patch as well as their horizontal
# reflections". (y, x) offsets: top-left, top-right, bottom-left, bottom-right, centre.
VIEW_OFFSETS = ((0, 0), (0, MAX_OFFSET), (MAX_OFFSET, 0), (MAX_OFFSET, MAX_OFFSET),
                (CENTER_OFFSET, CENTER_OFFSET))


def ten_views(images, stats: Statistics, mean: str = "per_pixel",
              size: int = IMAGE_SIZE) -> tf.Tensor:
  """The paper's 10 test patches of each image: uint8 [B, 256, 256, 3] -> float32
  [B, 10, 224, 224, 3], views 0-4 as in VIEW_OFFSETS, views 5-9 their mirrors (corners and
  centre of `size` crops for another size)."""
  images = tf.convert_to_tensor(images)
  _check_batch(images)
  _check_size(size)
  last, centre = STORED_SIZE - size, (STORED_SIZE - size) // 2
  offsets = ((0, 0), (0, last), (last, 0), (last, last), (centre, centre))
  views = [_crop(images, stats, mean, y, x, size) for y, x in offsets]
  views += [tf.reverse(view, axis=[2]) for view in views]
  return tf.stack(views, axis=1)


@tf.autograph.experimental.do_not_convert
def header_pixels(image_bytes) -> tf.Tensor:
  """Width x height (int64) read from the header of PNG, GIF, BMP and WebP bytes, without
  decoding; -1 for other bytes (the decoder then refuses them, or they are JPEG, whose shape
  tf.io.extract_jpeg_shape reads). Layouts: PNG's IHDR (big-endian width, height at bytes
  16, 20), GIF's frames (_gif_pixels), BMP's info header (32-bit at
  18, 22; 16-bit for the 12-byte OS/2 header), WebP's VP8/VP8L/VP8X chunk."""
  padded = tf.strings.join([tf.convert_to_tensor(image_bytes, tf.string), "\0" * 32])

  def starts(offset, magic):
    return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)

  def number(offset, size, big_endian=False):
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, size), tf.uint8),
                     tf.int64)
    powers = tf.constant([256 ** i for i in range(size)], tf.int64)
    return tf.reduce_sum(digits * (powers[::-1] if big_endian else powers))

  def signed32(value):
    return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

  png = number(16, 4, True) * number(20, 4, True)
  gif = tf.cond(starts(0, b"GIF"), lambda: _gif_pixels(padded),
                lambda: tf.constant(0, tf.int64))
  bmp = tf.where(tf.equal(number(14, 4), 12), number(18, 2) * number(20, 2),
                 signed32(number(18, 4)) * signed32(number(22, 4)))
  lossless = number(21, 4)
  webp = tf.where(starts(12, b"VP8X"), (number(24, 3) + 1) * (number(27, 3) + 1),
                  tf.where(starts(12, b"VP8L"),
                           (lossless % 2 ** 14 + 1) * (lossless // 2 ** 14 % 2 ** 14 + 1),
                           (number(26, 2) % 2 ** 14) * (number(28, 2) % 2 ** 14)))
  is_webp = tf.logical_and(starts(0, b"RIFF"), starts(8, b"WEBP"))
  return tf.where(starts(0, b"\x89PNG\r\n\x1a\n"), png,
                  tf.where(starts(0, b"GIF"), gif,
                           tf.where(starts(0, b"BM"), bmp,
                                    tf.where(is_webp, webp, tf.constant(-1, tf.int64)))))


@tf.autograph.experimental.do_not_convert
def _gif_pixels(data) -> tf.Tensor:
  """The pixels TF's GIF decoder holds: it reads every frame (giflib's DGifSlurp) before it
  keeps the first, so a GIF costs the sum of its frames' sizes, not its screen size. Walks the
  GIF89a block structure (extensions and image descriptors, each followed by sub-blocks of at
  most 255 bytes) without decompressing anything."""
  raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64)
  size = tf.size(raw, out_type=tf.int64)

  def at(i):
    return tf.gather(raw, tf.minimum(tf.cast(i, tf.int64), size - 1))

  def color_table(flags):
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64),
                                                            flags % 8), 0)

  screen = (at(6) + 256 * at(7)) * (at(8) + 256 * at(9))
  start = tf.constant(13, tf.int64) + color_table(at(10))

  def step(pos, in_blocks, pixels, done):
    byte = at(pos)

    def sub_block():
      return (tf.where(byte == 0, pos + 1, pos + 1 + byte), byte != 0, pixels, done)

    def introducer():
      is_image = byte == 0x2C
      frame = (at(pos + 5) + 256 * at(pos + 6)) * (at(pos + 7) + 256 * at(pos + 8))
      after_image = pos + 10 + color_table(at(pos + 9)) + 1   # + LZW minimum code size
      return (tf.where(is_image, after_image, pos + 2), tf.constant(True),
              pixels + tf.where(is_image, frame, 0),
              tf.logical_not(tf.logical_or(is_image, byte == 0x21)))

    return tf.cond(in_blocks, sub_block, introducer)

  _, _, pixels, _ = tf.while_loop(
      lambda pos, in_blocks, pixels, done: tf.logical_and(tf.logical_not(done), pos < size),
      step, (start, tf.constant(False), tf.constant(0, tf.int64), tf.constant(False)),
      maximum_iterations=tf.cast(size, tf.int32))
  return tf.maximum(pixels, screen)


def _check_pixels(pixels, max_pixels: int, what: str):
  """An Assert that fails with InvalidArgument when `pixels` exceeds the limit."""
  return tf.raw_ops.Assert(
      condition=tf.less_equal(pixels, max_pixels),
      data=[tf.constant(f"The {what} header declares"), pixels, tf.constant(
          f"pixels (width x height), more than the limit of {max_pixels} "
          "(max_image_pixels); the image is refused before decoding.")], summarize=4)


def decode_to_stored(image_bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP (RGB, grayscale or CMYK) -> uint8 [256, 256, 3] RGB: the shorter
  side resized to 256 and the central 256x256 patch (section 2), what the builder stores.

  Resize-then-crop equals crop-the-central-square-then-resize, so a JPEG decodes only its
  central square (tf.io.decode_and_crop_jpeg skips the rest).

  An image whose header declares more than `max_pixels` pixels fails with InvalidArgument
  before any pixel is decoded: a few hundred kB of PNG can declare 20000x20000 (1.2 GB).
  """
  image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

  def square_window(height, width):
    side = tf.minimum(height, width)
    return tf.stack([(height - side) // 2, (width - side) // 2, side, side])

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    pixels = tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)
    with tf.control_dependencies([_check_pixels(pixels, max_pixels, "JPEG")]):
      return tf.io.decode_and_crop_jpeg(image_bytes, square_window(shape[0], shape[1]),
                                        channels=3)

  def other():
    with tf.control_dependencies([_check_pixels(header_pixels(image_bytes), max_pixels,
                                                "image")]):
      image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    window = square_window(tf.shape(image)[0], tf.shape(image)[1])
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

  square = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  square.set_shape([None, None, 3])

  def resize():
    resized = tf.image.resize(square, [STORED_SIZE, STORED_SIZE], method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  stored = tf.cond(tf.shape(square)[0] == STORED_SIZE, lambda: square, resize)
  return tf.ensure_shape(stored, [STORED_SIZE, STORED_SIZE, 3])


def serving_preprocess(image_bytes, stats: Statistics, mean: str = "per_pixel",
                       size: int = IMAGE_SIZE,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> the evaluation input, float32 [224, 224, 3]
  ([size, size, 3]); an image over max_pixels (read from its header) is refused before it is
  decoded."""
  return center_crop(decode_to_stored(image_bytes, max_pixels)[None], stats, mean, size)[0]


def lighting_stddev(stats: Statistics) -> np.ndarray:
  """The per-channel standard deviation of the lighting shift: sqrt(sum_i (0.1 lambda_i p_ci)^2).
  For tests and logs."""
  return np.sqrt(((PCA_STDDEV * stats.eigenvalues * stats.eigenvectors) ** 2).sum(axis=1))

