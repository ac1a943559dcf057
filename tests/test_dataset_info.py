"""dataset_info: the reader's errors."""


import numpy as np
import pytest

from keras_alexnet import dataset_info
from keras_alexnet import files


def test_read_names_a_malformed_file(tmp_path):
  assert dataset_info.read(str(tmp_path)) is None
  (tmp_path / "dataset_info.json").write_text("{not json")
  with pytest.raises(ValueError, match="dataset_info.json is not a readable"):
    dataset_info.read(str(tmp_path))
  (tmp_path / "dataset_info.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="must hold a JSON object; found list"):
    dataset_info.read(str(tmp_path))


def test_mean_image_must_be_hw3(tmp_path):
  files.write_npy(str(tmp_path / "mean_image.npy"), np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match=r"must be \[H, W, 3\]; found shape \(4, 4\)"):
    dataset_info.read_mean_image(str(tmp_path), {"mean_image": "mean_image.npy"})
  assert dataset_info.read_mean_image(str(tmp_path), {"mean_image": None}) is None
