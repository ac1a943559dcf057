"""Top-k error, 10-view averaging and ensembles: on hand-made numbers, and end to end on
workdirs against an independent computation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import config as config_lib
from keras_alexnet import data_sources
from keras_alexnet import dataset as dataset_lib
from keras_alexnet import evaluate
from keras_alexnet import preprocessing
from keras_alexnet import workdir as workdir_lib
import tiny_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_top_k_on_a_hand_made_case():
  probabilities = np.array([
      [0.10, 0.50, 0.20, 0.15, 0.05, 0.00],   # label 1: first            -> top-1, top-5
      [0.10, 0.50, 0.20, 0.15, 0.05, 0.00],   # label 4: fifth            -> top-5 only
      [0.10, 0.50, 0.20, 0.15, 0.05, 0.00],   # label 5: sixth            -> neither
      [0.30, 0.30, 0.20, 0.10, 0.05, 0.05],   # label 1: tied for first   -> top-1 (as in_top_k)
  ])
  labels = np.array([1, 4, 5, 1])
  np.testing.assert_array_equal(evaluate.top_k_hits(probabilities, labels, 1),
                                [True, False, False, True])
  np.testing.assert_array_equal(evaluate.top_k_hits(probabilities, labels, 5),
                                [True, True, False, True])
  np.testing.assert_array_equal(
      evaluate.top_k_hits(probabilities, labels, 5),
      tf.math.in_top_k(tf.constant(labels), tf.constant(probabilities, tf.float32), 5).numpy())


def test_ten_view_and_ensemble_averaging():
  # Two images, 10 views, 3 classes: image 0's views mostly say class 2, a few strongly 0.
  views = np.zeros((2, 10, 3))
  views[0, :7] = [0.1, 0.2, 0.7]
  views[0, 7:] = [0.9, 0.05, 0.05]
  views[1] = [0.2, 0.5, 0.3]
  averaged = evaluate.average_views(views)
  np.testing.assert_allclose(averaged[0], [0.34, 0.155, 0.505])
  np.testing.assert_allclose(averaged[1], [0.2, 0.5, 0.3])
  a = np.array([[0.6, 0.4], [0.1, 0.9]])
  b = np.array([[0.2, 0.8], [0.3, 0.7]])
  np.testing.assert_allclose(evaluate.ensemble([a, b]), [[0.4, 0.6], [0.2, 0.8]])
  # The ensemble can be right where one member is wrong: label 1 for image 0.
  assert not evaluate.top_k_hits(a, np.array([1, 1]), 1)[0]
  assert evaluate.top_k_hits(evaluate.ensemble([a, b]), np.array([1, 1]), 1)[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("evaluate")
  data_dir = tiny_data.write_dataset(str(root / "data"), validation=20, num_classes=4)
  workdirs = [tiny_data.make_workdir(str(root / f"run{i}"), data_dir, seed=i) for i in range(2)]
  return data_dir, workdirs


def _expected(data_dir, workdirs):
  """Errors computed directly: every image, every view, every model, by hand."""
  data = data_sources.DataConfig(data_dir)
  images, labels = [], []
  for x, y in dataset_lib.create_split(data, train=False, batch_size=7):
    images.append(x.numpy())
    labels.append(y.numpy())
  images, labels = np.concatenate(images), np.concatenate(labels)
  probs = {"center": [], "ten": []}
  for workdir in workdirs:
    model, _ = workdir_lib.load_model(workdir)
    stats = workdir_lib.load_statistics(workdir)
    probs["center"].append(tf.nn.softmax(model(preprocessing.center_crop(images, stats))).numpy())
    views = preprocessing.ten_views(images, stats)
    per_view = [tf.nn.softmax(model(views[:, v])).numpy() for v in range(10)]
    probs["ten"].append(np.mean(per_view, axis=0))

  def errors(p):
    return {f"top{k}_error": 1 - np.mean(evaluate.top_k_hits(p, labels, k)) for k in (1, 5)}
  return ({view: [errors(p) for p in probs[view]] for view in probs},
          {view: errors(np.mean(probs[view], axis=0)) for view in probs})


def test_evaluate_workdirs_and_their_ensemble(runs, tmp_path):
  data_dir, workdirs = runs
  output = str(tmp_path / "results.json")
  results = evaluate.evaluate(config_lib.EvalConfig(workdirs=tuple(workdirs), batch_size=6,
                                                    output=output))
  per_model, ensemble = _expected(data_dir, workdirs)
  assert results["examples"] == 20
  for view in ("center", "ten"):
    for got, want in zip(results["models"], per_model[view]):
      assert got[view] == pytest.approx(want)
    assert results["ensemble"][view] == pytest.approx(ensemble[view])
  with open(output) as f:
    assert json.load(f)["ensemble"]["members"] == 2
  table = evaluate.format_table(results)
  assert "ensemble of 2" in table and "10 views" in table and "40.7%" in table


def test_command_line_on_a_checkpoint(runs, tmp_path):
  data_dir, workdirs = runs
  prefix = workdir_lib.CheckpointStore(workdirs[0]).prefix(1)
  output = str(tmp_path / "out.json")
  process = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.evaluate", f"--checkpoint={prefix}", "--views=center",
       f"--output={output}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=tiny_data.child_env())
  assert process.returncode == 0, process.stderr
  assert "centre crop" in process.stdout and "(20 validation images)" in process.stdout
  with open(output) as f:
    results = json.load(f)
  assert results["models"][0]["checkpoint"] == prefix and "ten" not in results["models"][0]
  per_model, _ = _expected(data_dir, workdirs[:1])
  assert results["models"][0]["center"] == pytest.approx(per_model["center"][0])


def test_bad_input(runs, tmp_path):
  data_dir, workdirs = runs
  with pytest.raises(FileNotFoundError, match="not a training workdir|neither"):
    evaluate.evaluate(config_lib.EvalConfig(workdirs=(str(tmp_path),)))
  other = tiny_data.write_dataset(str(tmp_path / "six"), num_classes=6, train=6, validation=6)
  with pytest.raises(ValueError, match="4 classes but the dataset .* has 6"):
    evaluate.evaluate(config_lib.EvalConfig(workdirs=(workdirs[0],), data_dir=other))
