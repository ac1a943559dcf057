"""Tests of keras_alexnet.preprocessing: the augmentation, the evaluation views, serving.

Most tests use a "coordinate image" whose red channel is the row and green channel the column,
so every output pixel says where in the 256x256 image it came from.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import preprocessing as pp
from test_decoding import encode
from test_decoding import smooth_image

S, C, M = decoding.STORED_SIZE, decoding.IMAGE_SIZE, decoding.MAX_OFFSET


def coordinate_images(batch):
  y, x = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
  image = np.stack([y, x, (y + x) % 256], axis=-1).astype(np.uint8)
  images = np.repeat(image[None], batch, axis=0)
  images[:, :, :, 2] += np.arange(batch, dtype=np.uint8)[:, None, None]  # tell images apart
  return images


def zero_stats(mean_image=None):
  return dataset_info.Statistics(mean_image=mean_image, mean_rgb=np.zeros(3, np.float32),
                       eigenvalues=np.array(dataset_info.IMAGENET_EIGENVALUES, np.float32),
                       eigenvectors=np.array(dataset_info.IMAGENET_EIGENVECTORS, np.float32))


NO_LIGHT = pp.AugmentConfig(pca_lighting=False, mean="per_channel")


def offsets_and_mirrors(out):
  """From augmented coordinate images: (row, column) offset of each crop and whether mirrored."""
  rows = out[:, 0, 0, 0].astype(int)
  first, last = out[:, 0, 0, 1].astype(int), out[:, 0, -1, 1].astype(int)
  mirrored = first > last
  cols = np.where(mirrored, last, first)
  return rows, cols, mirrored


def test_augment_shapes_dtype_and_range():
  images = np.random.default_rng(0).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
  out = pp.augment(images, zero_stats(), NO_LIGHT, seed=tf.constant([1, 2]))
  assert out.shape == (3, C, C, 3) and out.dtype == tf.float32
  out = out.numpy()
  assert out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.round(out))
  # With the published statistics the mean is gone: values centre near 0.
  out = pp.augment(images, dataset_info.imagenet_statistics(), seed=tf.constant([1, 2])).numpy()
  assert -130 < out.min() and out.max() < 160 and abs(out.mean() - (127.5 - 114.5)) < 10


def test_crops_are_exact_windows_inside_the_image_and_move_with_the_seed():
  images = coordinate_images(64)
  config = pp.AugmentConfig(mirror=False, pca_lighting=False, mean="per_channel")
  out = pp.augment(images, zero_stats(), config, seed=tf.constant([3, 4])).numpy()
  rows, cols, mirrored = offsets_and_mirrors(out)
  assert not mirrored.any()
  assert rows.min() >= 0 and cols.min() >= 0 and rows.max() <= M and cols.max() <= M
  for b in range(64):
    np.testing.assert_array_equal(out[b], images[b, rows[b]:rows[b] + C, cols[b]:cols[b] + C])
  # 33 positions per axis: 64 draws spread over them, and reach both ends of the range.
  assert len(set(rows)) > 15 and len(set(cols)) > 15
  assert rows.min() <= 3 and rows.max() >= M - 3
  again = pp.augment(images, zero_stats(), config, seed=tf.constant([3, 4])).numpy()
  np.testing.assert_array_equal(out, again)
  other = pp.augment(images, zero_stats(), config, seed=tf.constant([3, 5])).numpy()
  other_rows, other_cols, _ = offsets_and_mirrors(other)
  assert (other_rows != rows).mean() > 0.8 and (other_cols != cols).mean() > 0.8


def test_mirror_is_exact_and_half_the_time():
  images = coordinate_images(200)
  out = pp.augment(images, zero_stats(), NO_LIGHT, seed=tf.constant([5, 6])).numpy()
  rows, cols, mirrored = offsets_and_mirrors(out)
  assert 0.35 < mirrored.mean() < 0.65
  for b in range(200):
    crop = images[b, rows[b]:rows[b] + C, cols[b]:cols[b] + C]
    np.testing.assert_array_equal(out[b], crop[:, ::-1] if mirrored[b] else crop)
  no_mirror = pp.AugmentConfig(mirror=False, pca_lighting=False, mean="per_channel")
  out = pp.augment(images[:20], zero_stats(), no_mirror, seed=tf.constant([5, 6])).numpy()
  assert not offsets_and_mirrors(out)[2].any()


def test_random_crop_off_gives_the_centre_crop():
  images = coordinate_images(4)
  config = pp.AugmentConfig(random_crop=False, mirror=False, pca_lighting=False)
  out = pp.augment(images, zero_stats(), config, seed=tf.constant([1, 1])).numpy()
  np.testing.assert_array_equal(out, pp.center_crop(images, zero_stats()).numpy())


def test_pca_lighting_has_the_papers_statistics():
  """shift = sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, 0.1) per image: zero mean, covariance
  P diag(0.01 lambda^2) P^T, the same shift on every pixel of an image."""
  stats = dataset_info.imagenet_statistics()
  gray = tf.constant(np.full((100, S, S, 3), 128, np.uint8))
  config = pp.AugmentConfig(mirror=False, mean="per_channel")
  augment = tf.function(lambda seed: pp.augment(gray, stats, config, seed), jit_compile=True)
  shifts = []
  for step in range(16):
    shift = augment(tf.constant([7, step])).numpy()[:, ::8, ::8] - (128 - stats.mean_rgb)
    # One shift per image, the same on every pixel.
    assert np.ptp(shift.reshape(100, -1, 3), axis=1).max() < 1e-3
    shifts.append(shift[:, 0, 0])
  shifts = np.concatenate(shifts)                             # 1600 draws x RGB
  n = len(shifts)
  expected_std = pp.lighting_stddev(stats)
  np.testing.assert_allclose(expected_std, np.sqrt(np.diag(
      stats.eigenvectors @ np.diag((0.1 * stats.eigenvalues) ** 2) @ stats.eigenvectors.T)),
      rtol=1e-5)
  assert np.all(np.abs(shifts.mean(axis=0)) < 4.5 * expected_std / np.sqrt(n))
  np.testing.assert_allclose(shifts.std(axis=0), expected_std, rtol=0.08)
  # Back to alpha: P^T shift / lambda must be N(0, 0.1), independent components.
  alpha = shifts @ stats.eigenvectors / stats.eigenvalues
  np.testing.assert_allclose(alpha.std(axis=0), pp.PCA_STDDEV, rtol=0.08)
  assert np.abs(np.corrcoef(alpha.T) - np.eye(3)).max() < 0.1


def test_per_pixel_mean_is_subtracted_at_the_crop_offset_and_mirrored_with_it():
  images = coordinate_images(40)
  mean_image = np.random.default_rng(1).uniform(0, 255, (S, S, 3)).astype(np.float32)
  seed = tf.constant([9, 9])
  config = pp.AugmentConfig(pca_lighting=False, mean="per_pixel")
  where = pp.augment(images, zero_stats(), config, seed).numpy()   # no mean image: offsets
  rows, cols, mirrored = offsets_and_mirrors(where)
  assert mirrored.any() and not mirrored.all()
  out = pp.augment(images, zero_stats(mean_image), config, seed).numpy()
  for b in range(40):
    crop = images[b, rows[b]:rows[b] + C, cols[b]:cols[b] + C] - mean_image[
        rows[b]:rows[b] + C, cols[b]:cols[b] + C]
    np.testing.assert_allclose(out[b], crop[:, ::-1] if mirrored[b] else crop, atol=1e-4)


def test_per_channel_mean():
  images = coordinate_images(2)
  stats = dataset_info.imagenet_statistics()
  out = pp.center_crop(images, stats, mean="per_channel").numpy()
  np.testing.assert_allclose(out, images[:, 16:240, 16:240] - stats.mean_rgb, atol=1e-4)
  # "per_pixel" without a mean image falls back to the per-channel mean.
  np.testing.assert_allclose(pp.center_crop(images, stats).numpy(), out)


def test_ten_views_are_the_corners_the_centre_and_their_mirrors():
  images = coordinate_images(2)
  mean_image = np.random.default_rng(2).uniform(0, 255, (S, S, 3)).astype(np.float32)
  views = pp.ten_views(images, zero_stats()).numpy()
  assert views.shape == (2, 10, C, C, 3)
  corners = {0: (0, 0), 1: (0, 32), 2: (32, 0), 3: (32, 32), 4: (16, 16)}
  for v, (y, x) in corners.items():
    # Top-left pixel (row, column) of the view and of its mirror (whose top-left is the
    # view's top-right).
    assert tuple(views[0, v, 0, 0, :2]) == (y, x)
    assert tuple(views[0, v, -1, -1, :2]) == (y + C - 1, x + C - 1)
    assert tuple(views[0, v + 5, 0, 0, :2]) == (y, x + C - 1)
    assert tuple(views[0, v + 5, 0, -1, :2]) == (y, x)
  with_mean = pp.ten_views(images, zero_stats(mean_image)).numpy()
  for v, (y, x) in corners.items():
    crop = images[1, y:y + C, x:x + C] - mean_image[y:y + C, x:x + C]
    np.testing.assert_allclose(with_mean[1, v], crop, atol=1e-4)
    np.testing.assert_allclose(with_mean[1, v + 5], crop[:, ::-1], atol=1e-4)
  np.testing.assert_array_equal(pp.center_crop(images, zero_stats(mean_image)).numpy(),
                                with_mean[:, 4])


def test_same_numbers_eagerly_in_tf_data_and_under_xla():
  images = np.random.default_rng(3).integers(0, 256, (4, 2, S, S, 3), dtype=np.uint8)
  mean_image = np.random.default_rng(4).uniform(0, 255, (S, S, 3)).astype(np.float32)
  stats = dataclasses.replace(dataset_info.imagenet_statistics(), mean_image=mean_image)

  def both(batch, step):
    seed = tf.stack([tf.constant(11, tf.int64), step])
    return pp.augment(batch, stats, pp.AugmentConfig(), seed), pp.ten_views(batch, stats)

  eager = [both(images[i], tf.constant(i, tf.int64)) for i in range(4)]
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate().map(lambda i, b: both(b, i))
  xla = tf.function(lambda batch, step: both(batch, step)[0], jit_compile=True)
  for i, (augmented, views) in enumerate(ds):
    np.testing.assert_array_equal(augmented.numpy(), eager[i][0].numpy())
    np.testing.assert_array_equal(views.numpy(), eager[i][1].numpy())
    compiled = xla(tf.constant(images[i]), tf.constant(i, tf.int64))
    np.testing.assert_allclose(compiled.numpy(), eager[i][0].numpy(), atol=1e-3)
  jpeg = tf.io.encode_jpeg(images[0, 0, :, :200]).numpy()
  in_ds = next(iter(tf.data.Dataset.from_tensors(jpeg).map(lambda b: pp.serving_preprocess(b, stats))))
  np.testing.assert_array_equal(in_ds.numpy(), pp.serving_preprocess(jpeg, stats).numpy())


def test_serving_preprocess_is_the_centre_crop_of_the_stored_image():
  image = smooth_image(300, 420)
  jpeg = encode(image, "JPEG")
  stats = dataset_info.imagenet_statistics()
  served = pp.serving_preprocess(jpeg, stats)
  assert served.shape == (C, C, 3) and served.dtype == tf.float32
  np.testing.assert_array_equal(
      served.numpy(), pp.center_crop(decoding.decode_to_stored(jpeg)[None], stats)[0].numpy())


@pytest.mark.parametrize("images,message", [
    (np.zeros((2, S, S, 3), np.float32), "uint8"),
    (np.zeros((2, 224, 224, 3), np.uint8), "256"),
    (np.zeros((S, S, 3), np.uint8), "B, 256"),
])
def test_bad_batches_are_refused(images, message):
  with pytest.raises(ValueError, match=message):
    pp.augment(images, zero_stats(), seed=tf.constant([0, 0]))
  with pytest.raises(ValueError, match=message):
    pp.ten_views(images, zero_stats())


def test_bad_config_and_seed_are_refused():
  with pytest.raises(ValueError, match="per_pixel"):
    pp.AugmentConfig(mean="median")
  with pytest.raises(ValueError, match="per_pixel"):
    pp.center_crop(np.zeros((1, S, S, 3), np.uint8), zero_stats(), mean="median")
  with pytest.raises(ValueError, match="seed"):
    pp.augment(np.zeros((1, S, S, 3), np.uint8), zero_stats(), seed=tf.constant([1.0, 2.0]))
