"""dataset_info: the atomic writer every user-kept file goes through, and the reader's errors."""

import json
import os

import numpy as np
import pytest

from keras_alexnet import dataset_info


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / "dataset_info.json")
  dataset_info.write_json_atomic(path, {"num_classes": 5})
  assert json.load(open(path)) == {"num_classes": 5}

  def fails_half_way(f):
    f.write(b'{"num_classes": ')
    raise OSError("disk full")
  with pytest.raises(OSError, match="disk full"):
    dataset_info.write_atomic(path, fails_half_way)
  assert json.load(open(path)) == {"num_classes": 5}  # the old file, untouched
  assert os.listdir(tmp_path) == ["dataset_info.json"]  # and no temporary left behind


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
  path = str(tmp_path / "mean_image.npy")
  dataset_info.write_npy_atomic(path, np.zeros((2, 2, 3), np.float32))
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_read_names_a_malformed_file(tmp_path):
  assert dataset_info.read(str(tmp_path)) is None
  (tmp_path / "dataset_info.json").write_text("{not json")
  with pytest.raises(ValueError, match="dataset_info.json is not a readable"):
    dataset_info.read(str(tmp_path))
  (tmp_path / "dataset_info.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="must hold a JSON object; found list"):
    dataset_info.read(str(tmp_path))


def test_mean_image_must_be_hw3(tmp_path):
  dataset_info.write_npy_atomic(str(tmp_path / "mean_image.npy"), np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match=r"must be \[H, W, 3\]; found shape \(4, 4\)"):
    dataset_info.read_mean_image(str(tmp_path), {"mean_image": "mean_image.npy"})
  assert dataset_info.read_mean_image(str(tmp_path), {"mean_image": None}) is None
