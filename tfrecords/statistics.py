"""Training-set pixel statistics: the mean image, the per-channel mean, the RGB covariance and
its eigen-pairs (the paper, Section 2: "subtracting the mean activity over the training set
from each pixel"; Section 4.1: "PCA on the set of RGB pixel values throughout the ImageNet
training set").

Everything is accumulated as exact integer sums (int64), one accumulator per shard, and
combined in shard order: the result cannot depend on how many processes built the shards or in
which order they finished. Covariances are over pixels (every pixel of every training image
counts once), on the 0..255 scale.
"""

import json
from typing import Optional

import numpy as np

# Per-pixel sums are kept in uint16 for up to this many images (257 * 255 = 65535 fits), then
# folded into the int64 totals: adding uint8 images to uint16 is several times cheaper in numpy
# than to int64.
_FOLD_EVERY = 257
# The six distinct products of the symmetric x x^T: rr, rg, rb, gg, gb, bb.
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


class PixelStatistics:
  """Exact sums over RGB uint8 images, mergeable and saveable per shard."""

  def __init__(self, image_size: Optional[int]):
    """image_size: the side of every image (a per-pixel mean is kept), or None (sizes vary)."""
    self.image_size = image_size
    self.num_images = 0
    self.num_pixels = 0
    self.channel_sum = np.zeros(3, np.int64)
    self.product_sum = np.zeros((3, 3), np.int64)   # sum of x x^T over pixels
    self.pixel_sum = (np.zeros((image_size, image_size, 3), np.int64)
                      if image_size else None)
    self._num_pending = 0
    if image_size:
      self._pending_pixels = np.zeros((image_size, image_size, 3), np.uint16)
      # Sums of each product per image row (a row of up to 66,000 products fits uint32).
      self._pending_products = np.zeros((len(_PAIRS), image_size), np.uint64)
      self._planes = np.empty((3, image_size, image_size), np.uint32)
      self._product = np.empty((image_size, image_size), np.uint32)
      self._row_sums = np.empty(image_size, np.uint32)

  def add(self, pixels: np.ndarray) -> None:
    """Adds one uint8 [H, W, 3] image."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
      raise ValueError(f"expected uint8 [H, W, 3]; got {pixels.dtype} {pixels.shape}")
    self.num_images += 1
    self.num_pixels += pixels.shape[0] * pixels.shape[1]
    if self.pixel_sum is None:
      self._add_whole(pixels)
      return
    if pixels.shape != self._pending_pixels.shape:
      raise ValueError(f"expected {self._pending_pixels.shape} images; got {pixels.shape}")
    np.add(self._pending_pixels, pixels, out=self._pending_pixels)
    # Same-dtype uint32 planes: numpy's mixed-dtype loops are several times slower.
    np.copyto(self._planes, np.moveaxis(pixels, 2, 0))
    for k, (i, j) in enumerate(_PAIRS):
      np.multiply(self._planes[i], self._planes[j], out=self._product)
      np.add.reduce(self._product, axis=1, out=self._row_sums)
      self._pending_products[k] += self._row_sums
    self._num_pending += 1
    if self._num_pending == _FOLD_EVERY:
      self._fold()

  def _add_whole(self, pixels: np.ndarray) -> None:
    """Images of varying size: reduce each image at once (slower, exact)."""
    planes = pixels.reshape(-1, 3).T.astype(np.uint64)
    self.channel_sum += planes.sum(axis=1).astype(np.int64)
    for i, j in _PAIRS:
      self.product_sum[i, j] += int((planes[i] * planes[j]).sum())
      self.product_sum[j, i] = self.product_sum[i, j]

  def _fold(self) -> None:
    if not self._num_pending:
      return
    pixel_sum = self._pending_pixels.astype(np.int64)
    self.pixel_sum += pixel_sum
    self.channel_sum += pixel_sum.sum(axis=(0, 1))
    for k, (i, j) in enumerate(_PAIRS):
      self.product_sum[i, j] += int(self._pending_products[k].sum())
      self.product_sum[j, i] = self.product_sum[i, j]
    self._pending_pixels.fill(0)
    self._pending_products.fill(0)
    self._num_pending = 0

  def merge(self, other: "PixelStatistics") -> None:
    """Adds another accumulator's sums (call in a fixed order; sums are exact anyway)."""
    other._fold()
    self._fold()
    self.num_images += other.num_images
    self.num_pixels += other.num_pixels
    self.channel_sum += other.channel_sum
    self.product_sum += other.product_sum
    if self.pixel_sum is not None:
      if other.pixel_sum is None:
        raise ValueError("cannot merge statistics without a per-pixel sum")
      self.pixel_sum += other.pixel_sum

  def arrays(self) -> dict[str, np.ndarray]:
    """The sums as named arrays (for np.savez); from_arrays() restores them."""
    self._fold()
    arrays = dict(channel_sum=self.channel_sum, product_sum=self.product_sum,
                  counts=np.array([self.num_images, self.num_pixels], np.int64),
                  image_size=np.array(self.image_size or 0, np.int64))
    if self.pixel_sum is not None:
      # Half the bytes on disk while it fits (a shard of up to 16.8M images).
      small = self.num_images * 255 < 2**32
      arrays["pixel_sum"] = self.pixel_sum.astype(np.uint32) if small else self.pixel_sum
    return arrays

  @classmethod
  def from_arrays(cls, arrays) -> "PixelStatistics":
    stats = cls(int(arrays["image_size"]) or None)
    stats.channel_sum = np.asarray(arrays["channel_sum"], np.int64)
    stats.product_sum = np.asarray(arrays["product_sum"], np.int64)
    stats.num_images, stats.num_pixels = (int(v) for v in arrays["counts"])
    if stats.pixel_sum is not None:
      stats.pixel_sum = np.asarray(arrays["pixel_sum"], np.int64)
    return stats

  def mean_image(self) -> Optional[np.ndarray]:
    """float32 [S, S, 3], or None without a fixed image size or images."""
    self._fold()
    if self.pixel_sum is None or not self.num_images:
      return None
    return (self.pixel_sum / self.num_images).astype(np.float32)

  def summary(self) -> dict:
    """mean_rgb, rgb_covariance, eigenvalues (descending), eigenvectors (columns), as lists.

    Each eigenvector's sign is fixed so that its largest component is positive (eigh may
    return either sign). All None when no pixel was added.
    """
    self._fold()
    if not self.num_pixels:
      return dict(mean_rgb=None, rgb_covariance=None, eigenvalues=None, eigenvectors=None)
    n = self.num_pixels
    mean = self.channel_sum / n
    covariance = self.product_sum / n - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    for k in range(3):
      if eigenvectors[np.argmax(np.abs(eigenvectors[:, k])), k] < 0:
        eigenvectors[:, k] = -eigenvectors[:, k]
    # Through JSON's float repr, so what is returned is exactly what dataset_info.json holds.
    return json.loads(json.dumps(dict(
        mean_rgb=mean.tolist(), rgb_covariance=covariance.tolist(),
        eigenvalues=eigenvalues.tolist(), eigenvectors=eigenvectors.tolist())))
