"""predict answers every readable image and reports every other one, by file."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import export
from keras_alexnet import predict
from keras_alexnet import preprocessing
from tiny_data import child_env, encode, photo  # tests/tiny_data.py

NUM_CLASSES = 7
CLASSES = [[f"n{i:08d}", f"thing {i}, a test class"] for i in range(NUM_CLASSES)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = child_env()


@pytest.fixture(scope="module")
def model():
  """A small conv net whose answer depends on the image."""
  return keras.Sequential([
      keras.Input((224, 224, 3)),
      keras.layers.Conv2D(4, 16, strides=16, activation="relu",
                          kernel_initializer=keras.initializers.GlorotUniform(seed=3)),
      keras.layers.Flatten(),
      keras.layers.Dense(NUM_CLASSES, kernel_initializer=keras.initializers.RandomNormal(
          stddev=0.001, seed=3)),
  ])


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
  base = str(tmp_path_factory.mktemp("serving"))
  export.export_saved_model(model, {"classes": CLASSES}, dataset_info.imagenet_statistics(),
                            base, warmup=False)
  return base


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """photos/{a.jpg, b.PNG, notes.txt, sub/c.jpeg, sub/broken.jpg, sub/empty.jpg}."""
  root = tmp_path_factory.mktemp("photos")
  (root / "sub").mkdir()
  (root / "a.jpg").write_bytes(encode(photo(300, 400, 0), "JPEG"))
  (root / "b.PNG").write_bytes(encode(photo(200, 150, 1)[..., 0], "PNG"))  # grayscale
  (root / "notes.txt").write_text("not an image, and not named like one")
  (root / "sub" / "c.jpeg").write_bytes(encode(photo(256, 256, 2), "JPEG"))
  (root / "sub" / "broken.jpg").write_bytes(b"<html>a web page saved as .jpg</html>")
  (root / "sub" / "empty.jpg").write_bytes(b"")
  return root


def expected_top5(model, paths):
  """The top 5 by the Keras model under evaluate's centre crop."""
  stats = dataset_info.imagenet_statistics()
  stored = tf.stack([decoding.decode_to_stored(open(p, "rb").read()) for p in paths])
  logits = model(preprocessing.center_crop(stored, stats), training=False)
  return np.argsort(-tf.nn.softmax(logits).numpy(), axis=1)[:, :5]


def test_image_files_expands_folders_in_order(tree):
  missing = str(tree / "missing.jpg")
  files = predict.image_files([str(tree), str(tree / "notes.txt"), missing])
  assert files == [str(tree / "a.jpg"), str(tree / "b.PNG"), str(tree / "sub" / "broken.jpg"),
                   str(tree / "sub" / "c.jpeg"), str(tree / "sub" / "empty.jpg"),
                   str(tree / "notes.txt"), missing]


def test_resolve_saved_model(saved_model, tmp_path):
  assert predict.resolve_saved_model(saved_model) == os.path.join(saved_model, "1")
  assert predict.resolve_saved_model(os.path.join(saved_model, "1")) == os.path.join(
      saved_model, "1")
  for version in ("9", "10"):                      # Numeric order: 10 is newer than 9.
    os.makedirs(tmp_path / version)
    (tmp_path / version / "saved_model.pb").write_bytes(b"")
  os.makedirs(tmp_path / "11")                     # Not a SavedModel (e.g. being copied).
  assert predict.resolve_saved_model(str(tmp_path)) == str(tmp_path / "10")
  with pytest.raises(FileNotFoundError, match="No SavedModel at .*nowhere.*saved_model.pb"):
    predict.resolve_saved_model(str(tmp_path / "nowhere"))


def test_bad_files_are_reported_and_the_others_answered(saved_model, model, tree):
  loaded = predict.load(saved_model)
  signature = loaded.signatures[predict.SIGNATURE]
  good = [str(tree / "a.jpg"), str(tree / "b.PNG"), str(tree / "sub" / "c.jpeg")]
  files = [good[0], str(tree / "sub" / "broken.jpg"), good[1], str(tree / "sub" / "empty.jpg"),
           str(tree / "missing.jpg"), good[2]]
  results = predict.predict_files(signature, files, batch_size=3)
  assert [r.path for r in results] == files
  errors = {os.path.basename(r.path): r.error for r in results if r.error}
  assert errors == {
      "broken.jpg": "cannot decode: Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, "
                    "BMP, WebP required.",
      "empty.jpg": "cannot decode: assertion failed: [image_bytes must hold encoded images "
                   "(JPEG, PNG, GIF or BMP); these elements are empty strings:] [0]",
      "missing.jpg": "cannot read: No such file or directory"}
  answered = [r for r in results if not r.error]
  np.testing.assert_array_equal([[c for c, _, _, _ in r.top5] for r in answered],
                                expected_top5(model, good))
  for r in answered:
    assert [(w, n) for _, w, n, _ in r.top5] == [tuple(CLASSES[c]) for c, _, _, _ in r.top5]
    probabilities = [p for _, _, _, p in r.top5]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
  # The same answers as in a batch without the bad files (up to float rounding, which
  # depends on the batch size).
  clean = predict.predict_files(signature, good, batch_size=8)
  assert [[c for c, _, _, _ in r.top5] for r in clean] == [
      [c for c, _, _, _ in r.top5] for r in answered]
  np.testing.assert_allclose([[p for _, _, _, p in r.top5] for r in clean],
                             [[p for _, _, _, p in r.top5] for r in answered], atol=1e-6)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "keras_alexnet.predict", *args],
                        capture_output=True, text=True, env=ENV, timeout=300)


def test_command_prints_a_table_and_exits_nonzero_on_bad_files(saved_model, model, tree):
  result = run_cli(f"--saved_model={saved_model}", str(tree), str(tree / "missing.jpg"))
  assert result.returncode == 1, result.stderr[-3000:]
  top5 = expected_top5(model, [tree / "a.jpg", tree / "b.PNG", tree / "sub" / "c.jpeg"])
  blocks = result.stdout.strip().split("\n\n")
  assert [b.splitlines()[0] for b in blocks] == [
      str(tree / "a.jpg"), str(tree / "b.PNG"), str(tree / "sub" / "c.jpeg")]
  for block, classes in zip(blocks, top5):
    lines = block.splitlines()
    assert lines[1].split() == ["rank", "probability", "wnid", "name"]
    for rank, (line, c) in enumerate(zip(lines[2:], classes), 1):
      assert line.split(None, 3) == [str(rank), line.split()[1], CLASSES[c][0], CLASSES[c][1]]
  assert result.stderr.count("cannot decode") == 2 and "missing.jpg: cannot read" in (
      result.stderr)


def test_command_json(saved_model, tree):
  result = run_cli(f"--saved_model={saved_model}/1", "--json", str(tree / "a.jpg"),
                   str(tree / "sub" / "broken.jpg"))
  assert result.returncode == 1, result.stderr[-3000:]
  entries = json.loads(result.stdout)
  assert [e["file"] for e in entries] == [str(tree / "a.jpg"), str(tree / "sub" / "broken.jpg")]
  assert [sorted(row) for row in entries[0]["top5"]] == [
      ["class", "name", "probability", "wnid"]] * 5
  assert "Unknown image file format" in entries[1]["error"] and "top5" not in entries[1]

  bad_model = run_cli(f"--saved_model={tree}", str(tree / "a.jpg"))
  assert bad_model.returncode == 2
  assert "No SavedModel at" in bad_model.stderr
