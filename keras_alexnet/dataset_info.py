"""dataset_info.json: what the builder knows about a dataset and the pipeline needs.

Written by tfrecords/build.py beside the shards; read by the input pipeline (class count,
example counts), by train (num_classes, and the training-set mean and RGB PCA for lighting:
`statistics_from_dataset_info`, checked here, with the published ImageNet values as the
fallback) and by export (the label map). Pixel statistics are on the 0..255 scale of uint8 RGB.
Imports only numpy, absl logging and decoding (STORED_SIZE).

{
  "format": "keras_alexnet",           # or "model_garden", "tfds" for peer datasets
  "label_offset": 0,                   # subtract from the stored label to get 0..C-1
  "image_size": 256,                   # every stored image is 256x256; null: original sizes
  "num_classes": 1000,
  "classes": [["n01440764", "tench, Tinca tinca"], ...],   # index order
  "splits": {"train": {"num_examples": N, "num_shards": S, "num_skipped": K}, ...},
  "mean_rgb": [r, g, b],               # per-channel mean of the training set
  "mean_image": "mean_image.npy",      # per-pixel mean, float32 [256, 256, 3], or null
  "rgb_covariance": [[...] x3],
  "eigenvalues": [l1, l2, l3],         # descending
  "eigenvectors": [[...] x3],          # column i is the eigenvector of eigenvalue i
  "build": {...}                       # input path, flags, seed: to refuse mixing builds
}
"""

import dataclasses
import json
import os
from typing import Optional

from absl import logging
import numpy as np

from keras_alexnet import decoding

FILENAME = "dataset_info.json"
MEAN_IMAGE_FILENAME = "mean_image.npy"

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


def read(data_dir: str) -> Optional[dict]:
  """The parsed dataset_info.json of `data_dir`, or None if there is none.

  Raises ValueError naming the file if it exists but is not valid JSON.
  """
  path = os.path.join(data_dir, FILENAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable dataset_info.json: {e}") from e
  if not isinstance(info, dict):
    raise ValueError(f"{path} must hold a JSON object; found {type(info).__name__}.")
  return info


def read_mean_image(data_dir: str, info: dict) -> Optional[np.ndarray]:
  """The per-pixel training mean [H, W, 3] float32 named by `info`, or None."""
  name = info.get("mean_image")
  if not name:
    return None
  path = os.path.join(data_dir, name)
  try:
    mean = np.load(path)
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"{path} is not a readable .npy mean image ({e}); rebuild the dataset "
                     "or restore the file.") from None
  if mean.ndim != 3 or mean.shape[-1] != 3:
    raise ValueError(f"{path}: mean image must be [H, W, 3]; found shape {mean.shape}.")
  return mean.astype(np.float32)


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
  info = read(data_dir)
  path = os.path.join(data_dir, FILENAME)
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
    mean_image = read_mean_image(data_dir, info)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read the mean image {info.get('mean_image')!r}: {e}") from e
  if mean_image is None:
    fallbacks.append("mean_image (per-pixel mean; the per-channel mean is used instead)")
  else:
    size = decoding.STORED_SIZE
    if mean_image.shape != (size, size, 3) or not np.all(np.isfinite(mean_image)):
      raise ValueError(
          f"{path}: the mean image must be finite float [{size}, {size}, 3], the "
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
