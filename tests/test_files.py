"""files: the atomic writer every user-kept file goes through."""

import json
import os

import numpy as np
import pytest

from keras_alexnet import files


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / "dataset_info.json")
  files.write_json(path, {"num_classes": 5})
  assert json.load(open(path)) == {"num_classes": 5}

  def fails_half_way(f):
    f.write(b'{"num_classes": ')
    raise OSError("disk full")
  with pytest.raises(OSError, match="disk full"):
    files.write_atomic(path, fails_half_way)
  assert json.load(open(path)) == {"num_classes": 5}  # the old file, untouched
  assert os.listdir(tmp_path) == ["dataset_info.json"]  # and no temporary left behind


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
  path = str(tmp_path / "mean_image.npy")
  files.write_npy(path, np.zeros((2, 2, 3), np.float32))
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_a_temp_dir_gets_the_umask_mode_and_names_its_owner(tmp_path):
  path = files.make_temp_dir(str(tmp_path))
  assert os.path.basename(path).startswith(files.temp_prefix())
  assert os.stat(path).st_mode & 0o777 == 0o777 & ~files.umask()
