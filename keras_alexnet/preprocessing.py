"""Pure image functions shared by training, evaluation and export.

The input pipeline (keras_alexnet.dataset) delivers uint8 256x256x3 batches; everything after
that happens here, on the accelerator, inside the step that runs the model:

- `augment`: the paper's training-time augmentation (section 4.1): a random 224x224 patch and
  its horizontal reflection, PCA lighting, minus the training mean, as float32.
- `center_crop` and `ten_views`: the evaluation crops (section 4.1: "the four corner patches
  and the center patch as well as their horizontal reflections (hence ten patches in all)").
- `serving_preprocess`: raw image bytes -> the stored 256x256 image (decoding.decode_to_stored,
  the pipeline's own decoder) -> the evaluation crop, so that an exported model and the
  evaluation cannot drift.

Pixel values are on the 0..255 scale throughout. Imports decoding (the stored image's size, the
network's input size and the decoder) and dataset_info (the Statistics type); the statistics are read from files by dataset_info, not here.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import errors

# Section 4.1: alpha_i "drawn from a Gaussian with mean zero and standard deviation 0.1".
PCA_STDDEV = 0.1

MEANS = ("per_pixel", "per_channel")
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


def _check_mean(mean):
  if mean not in MEANS:
    raise errors.invalid("mean", mean, f"one of {MEANS}")


def _check_batch(images, name="images"):
  shape = images.shape
  size = decoding.STORED_SIZE
  if images.dtype != tf.uint8 or shape.rank != 4 or tuple(shape[1:]) != (size, size, 3):
    raise ValueError(f"{name} must be a uint8 batch [B, {size}, {size}, 3] (the "
                     f"input pipeline's output); received {images.dtype.name} {shape}.")


def _mean_image(stats: dataset_info.Statistics, mean: str) -> tf.Tensor:
  """The mean to subtract, [256, 256, 3] or [1, 1, 3], float32."""
  _check_mean(mean)
  if mean == "per_pixel" and stats.mean_image is not None:
    return tf.constant(stats.mean_image, tf.float32)
  return tf.constant(np.reshape(stats.mean_rgb, (1, 1, 3)), tf.float32)


def augment(images, stats: dataset_info.Statistics, config: AugmentConfig = AugmentConfig(),
            seed=(0, 0)) -> tf.Tensor:
  """The paper's training augmentation (section 4.1) of a uint8 [B, 256, 256, 3] batch.

  Per image, from stateless random ops seeded by `seed` (int32/int64 [2]; fold the step and the
  replica id into it): a random 224x224 patch (offsets uniform in 0..32), mirrored with
  p = 0.5, plus sum_i alpha_i lambda_i p_i with alpha_i ~ N(0, 0.1), minus the training mean
  (the mean image cropped and mirrored with the image, or the per-channel mean).

  The crop and the mirror together are two batched gathers (rows, then reversed-or-not
  columns), which XLA compiles; with jit_compile they run faster than a map_fn of
  tf.image.crop_to_bounding_box (figures in BUILD_NOTES.md, "Input pipeline").

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


def augment_crops(crops, offsets, stats: dataset_info.Statistics,
                  config: AugmentConfig = AugmentConfig(), seed=(0, 0)) -> tf.Tensor:
  """`augment` for windows already cut on the CPU (data_sources.DataConfig.decode_crop): uint8
  [B, 224, 224, 3] crops taken at int32 [B, 2] (y, x) offsets of the 256x256 images. The
  mirror, the PCA lighting and the mean (cropped at the same offsets) as `augment` with the
  same seed: given the offsets augment would draw, the result is augment's, exactly.

  Returns float32 [B, 224, 224, 3].
  """
  crops = tf.convert_to_tensor(crops)
  shape = crops.shape
  size = decoding.IMAGE_SIZE
  if crops.dtype != tf.uint8 or shape.rank != 4 or tuple(shape[1:]) != (size, size, 3):
    raise ValueError(f"crops must be a uint8 batch [B, {size}, {size}, 3] (the "
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
      tf.random.experimental.stateless_split(seed, 3, alg=decoding.RNG))

  if config.random_crop:
    offsets = tf.random.stateless_uniform([batch, 2], crop_seed, minval=0,
                                          maxval=decoding.MAX_OFFSET + 1, dtype=tf.int32,
                                          alg=decoding.RNG)
  else:
    offsets = tf.fill([batch, 2], decoding.CENTER_OFFSET)
  if config.mirror:
    mirrored = tf.random.stateless_uniform([batch], mirror_seed, minval=0, maxval=2,
                                           dtype=tf.int32, alg=decoding.RNG) == 1
  else:
    mirrored = tf.zeros([batch], tf.bool)
  alpha = None
  if config.pca_lighting:
    # N(0, 0.1) by the inverse CDF of uniform integers: XLA turns random bits into floats
    # and normals differently from TF's kernels, and eager and compiled steps must agree.
    bits = tf.random.stateless_uniform([batch, 3], pca_seed, minval=0, maxval=_UNIFORM_STEPS,
                                       dtype=tf.int32, alg=decoding.RNG)
    uniform = (tf.cast(bits, tf.float32) + 0.5) / _UNIFORM_STEPS
    alpha = PCA_STDDEV * tf.math.ndtri(uniform)
  return offsets, mirrored, alpha


def _finish(crops, rows, cols, alpha, stats, config):
  """float32 crops minus the mean (the mean image at the crops' rows and columns), plus the
  lighting shift."""
  mean = _mean_image(stats, config.mean)
  if mean.shape[0] == decoding.STORED_SIZE:
    # The mean image cropped (and mirrored) exactly as each image was.
    mean = tf.gather(tf.gather(mean, rows), cols, axis=2, batch_dims=1)
  crops -= mean
  if alpha is not None:
    crops += lighting(alpha, stats)[:, None, None, :]
  return crops


def lighting(alpha, stats: dataset_info.Statistics) -> tf.Tensor:
  """The RGB shift sum_i alpha_i lambda_i p_i (section 4.1) for alpha [B, 3] -> [B, 3]."""
  eigenvalues = tf.constant(stats.eigenvalues, tf.float32)
  eigenvectors = tf.constant(stats.eigenvectors, tf.float32)
  return tf.linalg.matmul(alpha * eigenvalues, eigenvectors, transpose_b=True)


def _crop_indices(offsets, mirrored):
  """Row and column indices [B, 224] of each crop, the columns reversed where mirrored."""
  steps = tf.range(decoding.IMAGE_SIZE, dtype=tf.int32)
  rows = offsets[:, 0:1] + steps
  cols = offsets[:, 1:2] + tf.where(mirrored[:, None], decoding.IMAGE_SIZE - 1 - steps, steps)
  return rows, cols


def _gather_crops(images, rows, cols):
  """images[b, rows[b]][:, cols[b]] for every b: two batched gathers (rows, then columns)."""
  images = tf.gather(images, rows, axis=1, batch_dims=1)
  return tf.gather(images, cols, axis=2, batch_dims=1)


def _crop(images, stats, mean, y, x, size=decoding.IMAGE_SIZE):
  """The mean-subtracted float32 crop at the static offset (y, x)."""
  crop = tf.cast(images[:, y:y + size, x:x + size, :], tf.float32)
  mean = _mean_image(stats, mean)
  if mean.shape[0] == decoding.STORED_SIZE:
    mean = mean[y:y + size, x:x + size, :]
  return crop - mean


def _check_size(size):
  stored = decoding.STORED_SIZE
  if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= stored:
    raise ValueError(f"The crop size must be an integer in 1..{stored}; received {size!r}.")


def center_crop(images, stats: dataset_info.Statistics, mean: str = "per_pixel",
                size: int = decoding.IMAGE_SIZE) -> tf.Tensor:
  """The evaluation input: the centre 224x224 patch minus the mean. uint8 [B, 256, 256, 3] ->
  float32 [B, 224, 224, 3]. `mean` must be the one training used. Another `size` (a converted
  Caffe net's 227) starts at (256 - size) // 2, the integer division of Caffe's data layer."""
  images = tf.convert_to_tensor(images)
  _check_batch(images)
  _check_size(size)
  offset = (decoding.STORED_SIZE - size) // 2
  return _crop(images, stats, mean, offset, offset, size)


# Section 4.1: "the four corner patches and the center patch as well as their horizontal
# reflections". (y, x) offsets: top-left, top-right, bottom-left, bottom-right, centre.
VIEW_OFFSETS = ((0, 0), (0, decoding.MAX_OFFSET), (decoding.MAX_OFFSET, 0),
                (decoding.MAX_OFFSET, decoding.MAX_OFFSET),
                (decoding.CENTER_OFFSET, decoding.CENTER_OFFSET))


def ten_views(images, stats: dataset_info.Statistics, mean: str = "per_pixel",
              size: int = decoding.IMAGE_SIZE) -> tf.Tensor:
  """The paper's 10 test patches of each image: uint8 [B, 256, 256, 3] -> float32
  [B, 10, 224, 224, 3], views 0-4 as in VIEW_OFFSETS, views 5-9 their mirrors (corners and
  centre of `size` crops for another size)."""
  images = tf.convert_to_tensor(images)
  _check_batch(images)
  _check_size(size)
  last, centre = decoding.STORED_SIZE - size, (decoding.STORED_SIZE - size) // 2
  offsets = ((0, 0), (0, last), (last, 0), (last, last), (centre, centre))
  views = [_crop(images, stats, mean, y, x, size) for y, x in offsets]
  views += [tf.reverse(view, axis=[2]) for view in views]
  return tf.stack(views, axis=1)


def serving_preprocess(image_bytes, stats: dataset_info.Statistics, mean: str = "per_pixel",
                       size: int = decoding.IMAGE_SIZE,
                       max_pixels: int = decoding.MAX_IMAGE_PIXELS) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> the evaluation input, float32 [224, 224, 3]
  ([size, size, 3]); an image over max_pixels (read from its header) is refused before it is
  decoded."""
  stored = decoding.decode_to_stored(image_bytes, max_pixels)
  return center_crop(stored[None], stats, mean, size)[0]


def lighting_stddev(stats: dataset_info.Statistics) -> np.ndarray:
  """The per-channel standard deviation of the lighting shift: sqrt(sum_i (0.1 lambda_i p_ci)^2).
  For tests and logs."""
  return np.sqrt(((PCA_STDDEV * stats.eigenvalues * stats.eigenvectors) ** 2).sum(axis=1))

