"""dataset_info.json: what the builder knows about a dataset and the pipeline needs.

Written by tfrecords/build.py beside the shards; read by the input pipeline (class count,
example counts, the training-set mean and the RGB PCA for lighting), by train (num_classes),
and by export (the label map). Pixel statistics are on the 0..255 scale of uint8 RGB.

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

import json
import os
from typing import Optional

import numpy as np

FILENAME = "dataset_info.json"
MEAN_IMAGE_FILENAME = "mean_image.npy"


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
