"""tfrecords.statistics: exact sums, merged in any grouping, against numpy."""

import io

import numpy as np
import pytest

from tfrecords import statistics


def _images(count, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_fixed_size_matches_numpy_across_folds_and_merges():
  images = _images(600)   # more than two folds of the uint16/uint32 partial sums
  images[0][:] = 255      # the largest values the partial sums must hold
  whole = statistics.PixelStatistics(16)
  for picture in images:
    whole.add(picture)
  # Three "shards", saved and loaded as the builder does, merged in order.
  merged = statistics.PixelStatistics(16)
  for part in (images[:100], images[100:400], images[400:]):
    shard = statistics.PixelStatistics(16)
    for picture in part:
      shard.add(picture)
    buffer = io.BytesIO()
    np.savez(buffer, **shard.arrays())
    buffer.seek(0)
    with np.load(buffer) as arrays:
      merged.merge(statistics.PixelStatistics.from_arrays(arrays))
  assert whole.summary() == merged.summary()
  np.testing.assert_array_equal(whole.mean_image(), merged.mean_image())

  pixels = np.stack(images).astype(np.float64)
  flat = pixels.reshape(-1, 3)
  summary = whole.summary()
  np.testing.assert_allclose(summary["mean_rgb"], flat.mean(axis=0), rtol=1e-13)
  np.testing.assert_allclose(summary["rgb_covariance"], np.cov(flat.T, bias=True), rtol=1e-10)
  np.testing.assert_allclose(whole.mean_image(), pixels.mean(axis=0), rtol=1e-6)
  assert whole.num_images == 600 and whole.num_pixels == 600 * 256


def test_varying_sizes_and_eigen_pairs():
  rng = np.random.default_rng(1)
  base = rng.normal(0, 1, (5000, 3)) @ np.array([[40, 0, 0], [30, 10, 0], [20, 5, 3]])
  pixels = np.clip(base + 128, 0, 255).astype(np.uint8)
  stats = statistics.PixelStatistics(None)
  stats.add(pixels[:2000].reshape(40, 50, 3))
  stats.add(pixels[2000:].reshape(60, 50, 3))
  assert stats.mean_image() is None
  summary = stats.summary()
  covariance = np.cov(pixels.astype(np.float64).T, bias=True)
  np.testing.assert_allclose(summary["rgb_covariance"], covariance, rtol=1e-10)
  values, vectors = np.array(summary["eigenvalues"]), np.array(summary["eigenvectors"])
  assert list(values) == sorted(values, reverse=True)
  np.testing.assert_allclose(covariance @ vectors, vectors * values, rtol=1e-9)
  for k in range(3):   # the sign convention: the largest component of each vector is positive
    assert vectors[np.argmax(np.abs(vectors[:, k])), k] > 0


def test_rejects_what_it_cannot_sum():
  stats = statistics.PixelStatistics(16)
  with pytest.raises(ValueError, match="uint8"):
    stats.add(np.zeros((16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="16, 16, 3"):
    stats.add(np.zeros((8, 8, 3), np.uint8))
  assert statistics.PixelStatistics(None).summary()["mean_rgb"] is None
