"""The workdir's checkpoints: atomic writes, pruning, fallback past a damaged checkpoint, and
load_model rebuilding the exact model from config.json."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import files
from keras_alexnet import model as model_lib
from keras_alexnet import workdir as workdir_lib


def _checkpoint(value):
  v = tf.Variable(np.full([4], value, np.float32))
  return v, tf.train.Checkpoint(v=v)


def test_save_is_atomic_prunes_and_keeps_best(tmp_path):
  store = workdir_lib.CheckpointStore(str(tmp_path), keep=2)
  v, ckpt = _checkpoint(0.0)
  for step in range(1, 6):
    v.assign(np.full([4], float(step), np.float32))
    store.save(ckpt, step, {"step": step}, best={"top1_error": 0.5} if step == 2 else None)
  # The newest two and the best.
  assert store.steps() == [2, 4, 5]
  assert store.best() == {"step": 2, "top1_error": 0.5}
  assert not [n for n in os.listdir(store.directory) if n.startswith(".tmp-")]

  v.assign(np.zeros([4], np.float32))
  assert store.restore(ckpt) == {"step": 5}
  np.testing.assert_array_equal(v.numpy(), np.full([4], 5.0))


def test_killed_write_leaves_no_step_dir_and_is_cleaned(tmp_path):
  store = workdir_lib.CheckpointStore(str(tmp_path))
  v, ckpt = _checkpoint(1.0)
  store.save(ckpt, 1, {"step": 1})
  # What a process killed in the middle of save() leaves: a temp folder with part of a write.
  partial = os.path.join(store.directory, ".tmp-step-00000002-abc")
  os.makedirs(partial)
  with open(os.path.join(partial, "ckpt.index"), "wb") as f:
    f.write(b"\x00" * 10)
  assert store.steps() == [1]
  store.clean_partial()
  assert not os.path.exists(partial)
  v.assign(np.zeros([4], np.float32))
  assert store.restore(ckpt)["step"] == 1
  np.testing.assert_array_equal(v.numpy(), np.ones([4]))


def test_damaged_latest_falls_back_to_the_one_before(tmp_path):
  store = workdir_lib.CheckpointStore(str(tmp_path))
  v, ckpt = _checkpoint(1.0)
  store.save(ckpt, 1, {"step": 1})
  v.assign(np.full([4], 2.0, np.float32))
  store.save(ckpt, 2, {"step": 2})
  # A copy cut short / a disk error: the data file of step 2 is truncated.
  data = [n for n in os.listdir(store.path(2)) if n.startswith("ckpt.data")][0]
  with open(os.path.join(store.path(2), data), "r+b") as f:
    f.truncate(3)
  v.assign(np.zeros([4], np.float32))
  assert store.restore(ckpt)["step"] == 1
  np.testing.assert_array_equal(v.numpy(), np.ones([4]))

  # Nothing loads: an error, never a silent start from step 0.
  os.remove(os.path.join(store.path(1), "ckpt.index"))
  with pytest.raises(RuntimeError, match="will not silently"):
    store.restore(ckpt)


def test_non_chief_keeps_nothing(tmp_path):
  store = workdir_lib.CheckpointStore(str(tmp_path), is_chief=False, worker_id=1)
  _, ckpt = _checkpoint(1.0)
  assert store.save(ckpt, 3, {"step": 3}) is None
  assert store.steps() == [] and os.listdir(store.directory) == []


def _workdir(tmp_path, model_config, tiny=False):
  """A workdir as training leaves it: config.json, statistics.npz, one checkpoint."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  model = workdir_lib.build_model(model_config, tiny=tiny)
  files.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), {
      "model_config": workdir_lib.model_config_to_json(model_config), "tiny_model": tiny,
      "num_classes": model_config.num_classes, "classes": None, "data_dir": "/nowhere",
      "augment": {"mean": "per_channel"}})
  workdir_lib.save_statistics(workdir, dataset_info.imagenet_statistics())
  store = workdir_lib.CheckpointStore(workdir)
  store.save(tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(model)), 7,
             {"step": 7})
  return workdir, model, store


def test_load_model_rebuilds_the_paper_net(tmp_path):
  config = model_lib.ModelConfig(num_classes=10, pooling="non_overlapping", remove=("conv4",))
  workdir, trained, store = _workdir(tmp_path, config)
  x = np.random.default_rng(1).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
  model, metadata = workdir_lib.load_model(workdir, "latest")
  assert metadata["model_config"]["remove"] == ["conv4"]
  assert metadata["checkpoint"] == store.prefix(7)
  assert model.count_params() == trained.count_params()
  np.testing.assert_allclose(model(x), trained(x), rtol=1e-5, atol=1e-6)
  stats = workdir_lib.load_statistics(workdir)
  np.testing.assert_allclose(stats.mean_rgb, dataset_info.IMAGENET_MEAN_RGB, rtol=1e-6)


def test_load_model_accepts_workdir_step_dir_or_prefix(tmp_path):
  config = model_lib.ModelConfig(num_classes=5, dropout=0.0)
  workdir, trained, store = _workdir(tmp_path, config, tiny=True)
  x = np.random.default_rng(1).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
  fresh = workdir_lib.build_model(config, tiny=True)
  assert not np.allclose(fresh(x), trained(x))   # Loading, not the initializer, must match.
  for path in (workdir, store.path(7), store.prefix(7)):
    model, metadata = workdir_lib.load_model(path, "latest")
    assert metadata["checkpoint"] == store.prefix(7) and metadata["workdir"] == workdir
    np.testing.assert_allclose(model(x), trained(x), rtol=1e-5, atol=1e-6)
  # No best yet (no validation ran): "best" falls back to the latest.
  assert workdir_lib.load_model(workdir, "best")[1]["checkpoint"] == store.prefix(7)
  assert workdir_lib.checkpoint_prefix(workdir) == store.prefix(7)


def test_load_model_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a training workdir"):
    workdir_lib.load_model(str(tmp_path))
  workdir, _, store = _workdir(tmp_path, model_lib.ModelConfig(num_classes=3), tiny=True)
  # A checkpoint of another model (4 classes) under this config.json (3 classes).
  other = workdir_lib.build_model(model_lib.ModelConfig(num_classes=4), tiny=True)
  store.save(tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(other)), 8,
             {"step": 8})
  with pytest.raises(ValueError, match="does not match"):
    workdir_lib.load_model(workdir, "latest")
  for step in store.steps():
    shutil.rmtree(store.path(step))
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    workdir_lib.load_model(workdir)
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
    assert json.load(f)["num_classes"] == 3
