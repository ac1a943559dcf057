"""ImageNet shards made by TFDS or the Model Garden name no classes beside wnids (or nothing);
the packaged WordNet names then reach config.json, the SavedModel and predict's output.

The TFDS shards are written here as TFDS's imagenet2012 builder writes them: files
imagenet2012-<split>.tfrecord-NNNNN-of-NNNNN of tf.train.Examples with image (JPEG bytes),
label (int64) and file_name (bytes); beside them TFDS's own dataset_info.json and
label.labels.txt (the label feature's names: the 1000 sorted wnids)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import data as ilsvrc
from keras_alexnet import data_sources
from keras_alexnet import dataset_info
from keras_alexnet import export
from keras_alexnet import features
from keras_alexnet import files
from keras_alexnet import training
from keras_alexnet import workdir as workdir_lib
import tiny_data
from test_training import _config  # pylint: disable=g-bad-import-order

CLASSES = [list(c) for c in ilsvrc.ilsvrc2012_classes()]


def _bytes(value: bytes):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _write_tfds(data_dir, label_file=True, train=16, validation=8, name="imagenet2012"):
  """TFDS-format ImageNet shards of tiny_data's learnable images, labels 0..3."""
  os.makedirs(data_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  lengths = {}
  for split, count, shards in (("train", train, 2), ("validation", validation, 1)):
    lengths[split] = [0] * shards
    writers = [tf.io.TFRecordWriter(os.path.join(
        data_dir, f"{name}-{split}.tfrecord-{i:05d}-of-{shards:05d}")) for i in range(shards)]
    for i in range(count):
      label = i % 4
      encoded = tf.io.encode_jpeg(tiny_data.make_image(label, rng), quality=95).numpy()
      writers[i % shards].write(tf.train.Example(features=tf.train.Features(feature={
          "image": _bytes(encoded), "label": _int(label),
          "file_name": _bytes(f"{CLASSES[label][0]}_{i}.JPEG".encode())})).SerializeToString())
      lengths[split][i % shards] += 1
    for w in writers:
      w.close()
  files.write_json(os.path.join(data_dir, dataset_info.FILENAME), {
      "name": name, "version": "5.1.0", "fileFormat": "tfrecord",
      "splits": [{"name": s, "shardLengths": [str(n) for n in v],
                  "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}
                 for s, v in lengths.items()]})
  if label_file:
    with open(os.path.join(data_dir, "label.labels.txt"), "w") as f:
      f.write("".join(wnid + "\n" for wnid, _ in CLASSES))
  return data_dir


def test_tfds_and_model_garden_imagenet_get_the_wordnet_names(tmp_path):
  for label_file in (True, False):
    data_dir = _write_tfds(str(tmp_path / f"tfds-{label_file}"), label_file)
    meta = data_sources.dataset_metadata(data_sources.DataConfig(data_dir))
    assert meta["format"] == "tfds" and meta["num_classes"] == 1000
    assert meta["classes"] == CLASSES and meta["classes"][1] == [
        "n01443537", "goldfish, Carassius auratus"]
  # Another TFDS dataset of wnid-less labels is not taken for ImageNet.
  other = _write_tfds(str(tmp_path / "food"), label_file=False, name="food101")
  meta = data_sources.dataset_metadata(data_sources.DataConfig(other, num_classes=4))
  assert meta["classes"] is None

  # Model Garden: labels 1..1000, the record's synset is the packaged wnid of label - 1.
  for synset_of, expected in ((lambda label: CLASSES[label][0], CLASSES),
                              (lambda label: f"n{label:08d}", None)):   # not ImageNet's
    data_dir = str(tmp_path / f"garden-{expected is None}")
    os.makedirs(data_dir)
    for split in ("train", "validation"):
      with tf.io.TFRecordWriter(os.path.join(data_dir, features.shard_name(split, 0, 1))) as w:
        for i in range(4):
          w.write(features.make_example(
              tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy(), label=i + 1,
              synset=synset_of(i), text="", filename=f"{i}.JPEG", height=8, width=8))
    meta = data_sources.dataset_metadata(data_sources.DataConfig(data_dir))
    assert meta["format"] == "model_garden" and meta["classes"] == expected


def test_a_model_trained_on_tfds_imagenet_predicts_wordnet_names(tmp_path):
  data_dir = _write_tfds(str(tmp_path / "tfds"))
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(_config(data_dir, epochs=1, steps_per_epoch=2, eval_steps=1,
                                      summary_images=False), workdir)
  assert workdir_lib.read_metadata(workdir)["classes"] == CLASSES
  base = export.export_from_workdir(export.ExportConfig(
      workdir=workdir, export_dir=str(tmp_path / "serving"), warmup=False))
  image = tmp_path / "photo.jpg"
  image.write_bytes(tiny_data.encode(tiny_data.photo(300, 400, 0), "JPEG"))
  run = subprocess.run([sys.executable, "-m", "keras_alexnet.predict", f"--saved_model={base}",
                        "--json", str(image)], capture_output=True, text=True, timeout=300,
                       env=tiny_data.child_env())
  assert run.returncode == 0, run.stderr[-3000:]
  top5 = json.loads(run.stdout)[0]["top5"]
  assert len(top5) == 5
  for entry in top5:
    assert [entry["wnid"], entry["name"]] == CLASSES[entry["class"]]
    assert entry["name"] != entry["wnid"]
