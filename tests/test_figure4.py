"""Figure 4 on a tiny run whose validation split holds copies of training images: each copy's
nearest training image by fc7 (here: the tiny net's last hidden layer) is its original at
distance 0; the PNGs are real images of the sizes the command promises; the chunked search
equals a brute-force one."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import features
from keras_alexnet.experiments import figure4
from keras_alexnet import files
import tiny_data

COPIES = {1: 5, 4: 0, 6: 10}   # validation index -> the training index it is a copy of


def _write(data_dir):
  """12 training images over 4 classes; 7 validation images, three of them the very bytes of
  training images (under validation names), the rest new."""
  os.makedirs(data_dir)
  rng = np.random.default_rng(0)
  classes = [[f"n{k:08d}", f"class {k}"] for k in range(4)]
  train = [(tf.io.encode_jpeg(tiny_data.make_image(i % 4, rng), quality=95).numpy(), i % 4)
           for i in range(12)]
  validation = []
  for i in range(7):
    if i in COPIES:
      validation.append(train[COPIES[i]])
    else:
      validation.append((tf.io.encode_jpeg(tiny_data.make_image(i % 4, rng)).numpy(), i % 4))
  for split, items, shards in (("train", train, 2), ("validation", validation, 1)):
    writers = [tf.io.TFRecordWriter(os.path.join(data_dir, features.shard_name(split, s,
                                                                               shards)))
               for s in range(shards)]
    for i, (encoded, label) in enumerate(items):
      writers[i % shards].write(features.make_example(
          encoded, label=label, synset=classes[label][0], text=classes[label][1],
          filename=f"{split}_{i}.JPEG", height=256, width=256))
    for w in writers:
      w.close()
  files.write_json(os.path.join(data_dir, dataset_info.FILENAME), {
      "format": "keras_alexnet", "label_offset": 0, "image_size": 256, "num_classes": 4,
      "classes": classes, "mean_rgb": [60.0, 60.0, 60.0],
      "splits": {"train": {"num_examples": 12, "num_shards": 2},
                 "validation": {"num_examples": 7, "num_shards": 1}}})
  return data_dir


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  root = tmp_path_factory.mktemp("figure4")
  data_dir = _write(str(root / "data"))
  run = tiny_data.make_workdir(str(root / "run"), data_dir, seed=1)
  out = root / "out"
  done = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.experiments.figure4", f"--workdir={run}",
       f"--data_dir={data_dir}", f"--output_dir={out}", "--chunk_size=5", "--num_images=6",
       "--draw_queries=3", "--neighbours=4"],
      capture_output=True, text=True, env=tiny_data.child_env(), timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "search over train" in done.stderr   # the progress bar
  with open(out / figure4.RESULTS_FILE) as f:
    return out, json.load(f), run, data_dir


def test_each_copy_finds_its_original_at_distance_zero(result):
  _, found, _, _ = result
  queries = {q["file"]: q for q in found["queries"]}
  assert len(queries) == 7 and found["num_train_searched"] == 12
  for index, original in COPIES.items():
    nearest = queries[f"validation_{index}.JPEG"]["neighbours"][0]
    assert nearest["file"] == f"train_{original}.JPEG"
    assert nearest["label"] == original % 4
    assert nearest["distance"] == pytest.approx(0, abs=1e-4)
  for q in found["queries"]:
    distances = [n["distance"] for n in q["neighbours"]]
    assert len(distances) == 4 and distances == sorted(distances)
    if int(q["file"].split("_")[1].split(".")[0]) not in COPIES:
      assert distances[0] > 1e-2   # a new image is no copy of anything
  assert [p["file"] for p in found["predictions"]] == [f"validation_{i}.JPEG" for i in range(6)]
  top5 = found["predictions"][0]["top5"]
  assert len(top5) == 4 and abs(sum(t["probability"] for t in top5) - 1) < 1e-5  # 4 classes


def test_pngs_are_images_of_the_promised_size(result):
  out, _, _, _ = result
  with Image.open(out / figure4.LEFT_FILE) as left:
    assert left.format == "PNG" and left.size == figure4.left_size(6) == (1200, 840)
    left.load()
    assert np.asarray(left).std() > 10   # something is drawn
  with Image.open(out / figure4.RIGHT_FILE) as right:
    assert right.format == "PNG" and right.size == figure4.right_size(3, 4) == (800, 540)
    right.load()


def test_chunked_search_equals_brute_force():
  rng = np.random.default_rng(1)
  queries = rng.normal(size=(9, 32)).astype(np.float32)
  train = rng.normal(size=(50, 32)).astype(np.float32)
  train[17] = queries[3]
  search = figure4.NearestNeighbours(queries, k=5, keep_images=2)
  images = np.arange(50)[:, None] * np.ones((1, 3))
  for start in range(0, 50, 7):
    search.add(train[start:start + 7], [f"t{i}" for i in range(start, min(start + 7, 50))],
               list(range(start, min(start + 7, 50))), images[start:start + 7])
  full = np.linalg.norm(queries[:, None].astype(np.float64) - train[None], axis=2)
  expected = np.argsort(full, axis=1)[:, :5]
  got = search.results()
  assert [[n["label"] for n in row] for row in got] == expected.tolist()
  np.testing.assert_allclose([[n["distance"] for n in row] for row in got],
                             np.take_along_axis(full, expected, 1), rtol=1e-9)
  assert got[3][0] == {"file": "t17", "label": 17, "distance": 0.0}
  # The kept images are the neighbours' own.
  assert [int(i[0]) for i in search.images[1]] == expected[1].tolist()


def test_bad_arguments(result, tmp_path):
  _, _, run, data_dir = result
  with pytest.raises(ValueError, match=r"--neighbours must be an integer >= 1; received 0"):
    figure4.figure4(run, data_dir, str(tmp_path / "o"), neighbours=0)
  with pytest.raises(FileNotFoundError, match=r"no test images"):
    figure4.figure4(run, data_dir, str(tmp_path / "o"), split="test", plot=False)
  assert not (tmp_path / "o").exists()


def test_fewer_queries_than_left_panel_images(result, tmp_path):
  _, full, run, data_dir = result
  found = figure4.figure4(run, data_dir, str(tmp_path / "o"), num_images=5, num_queries=2,
                          draw_queries=2, neighbours=3, chunk_size=3, plot=False,
                          progress=False)
  assert [q["file"] for q in found["queries"]] == ["validation_0.JPEG", "validation_1.JPEG"]
  assert len(found["predictions"]) == 5
  # The same neighbours as the full run's (the search does not depend on the chunking).
  mine, theirs = found["queries"][1]["neighbours"], full["queries"][1]["neighbours"][:3]
  assert [n["file"] for n in mine] == [n["file"] for n in theirs]
  assert [n["distance"] for n in mine] == pytest.approx([n["distance"] for n in theirs],
                                                        rel=1e-4, abs=1e-5)
  assert os.listdir(tmp_path / "o") == [figure4.RESULTS_FILE]
