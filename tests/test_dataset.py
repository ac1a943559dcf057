"""Tests of keras_alexnet.dataset on tiny shards written here (real JPEGs, real TFRecords).

Every image is a solid colour that encodes its example: red = 30 * label, green = 4 * index.
So a batch says which examples it holds and whether each kept its label.
"""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import data_sources
from keras_alexnet import dataset
from keras_alexnet import dataset_info
from keras_alexnet import features
from keras_alexnet import files

S = 256


def solid_jpeg(label, index, height=S, width=S):
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0], image[..., 1], image[..., 2] = 30 * label, 4 * index, 100
  return tf.io.encode_jpeg(image, quality=95).numpy()


def identify(images):
  """(labels, indices) read back from the colours of a uint8 batch."""
  images = np.asarray(images, np.float64)
  return (np.round(images[:, 100:150, 100:150, 0].mean(axis=(1, 2)) / 30).astype(int),
          np.round(images[:, 100:150, 100:150, 1].mean(axis=(1, 2)) / 4).astype(int))


def write_shards(data_dir, split, num_shards, per_shard, *, label_fn=None, start=0,
                 label_offset=0, size_fn=None, encoded_fn=None, tfds=False):
  """Writes split shards; returns [(label, index)] in file order. Index = position overall."""
  os.makedirs(data_dir, exist_ok=True)
  written = []
  index = start
  for shard in range(num_shards):
    name = features.shard_name(split, shard, num_shards)
    if tfds:
      name = f"imagenet2012-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"
    with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as writer:
      for _ in range(per_shard):
        label = label_fn(shard, index) if label_fn else index % 8
        height, width = size_fn(index) if size_fn else (S, S)
        encoded = encoded_fn(index) if encoded_fn else None
        encoded = encoded if encoded is not None else solid_jpeg(label, index, height, width)
        filename = f"img{index:04d}.JPEG"
        if tfds:
          writer.write(tf.train.Example(features=tf.train.Features(feature={
              "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
              "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
              "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(
                  value=[filename.encode()])),
          })).SerializeToString())
        else:
          writer.write(features.make_example(
              encoded, label=label + label_offset, synset=f"n{label:08d}", text=f"class {label}",
              filename=filename, height=height, width=width))
        written.append((label, index))
        index += 1
  return written


def write_info(data_dir, num_train, num_validation, num_classes=8, **fields):
  info = {"format": "keras_alexnet", "label_offset": 0, "image_size": S,
          "num_classes": num_classes,
          "classes": [[f"n{i:08d}", f"class {i}"] for i in range(num_classes)],
          "splits": {"train": {"num_examples": num_train},
                     "validation": {"num_examples": num_validation}}}
  info.update(fields)
  files.write_json(os.path.join(data_dir, dataset_info.FILENAME), info)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
  """4 train shards x 6 and 2 validation shards x 5, this project's layout."""
  data_dir = str(tmp_path_factory.mktemp("ours"))
  write_shards(data_dir, "train", 4, 6)
  write_shards(data_dir, "validation", 2, 5, start=100 // 4)
  write_info(data_dir, 24, 10)
  return data_dir


def collect(ds):
  images, labels = [], []
  for x, y in ds:
    images.append(x.numpy())
    labels.append(y.numpy())
  return images, labels


def test_train_split_shapes_labels_and_one_epoch(ours):
  config = data_sources.DataConfig(ours, shuffle_buffer=8)
  images, labels = collect(dataset.create_split(config, train=True, batch_size=5))
  assert len(images) == 4                           # 24 examples, drop_remainder
  for x, y in zip(images, labels):
    assert x.shape == (5, S, S, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    colour_labels, _ = identify(x)
    np.testing.assert_array_equal(colour_labels, y)
  indices = np.concatenate([identify(x)[1] for x in images])
  assert len(set(indices)) == 20 and set(indices) <= set(range(24))


def test_validation_is_every_example_in_file_order(ours):
  config = data_sources.DataConfig(ours)
  images, labels = collect(dataset.create_split(config, train=False, batch_size=4))
  assert [len(y) for y in labels] == [4, 4, 2]
  colour_labels, indices = identify(np.concatenate(images))
  np.testing.assert_array_equal(indices, np.arange(25, 35))
  np.testing.assert_array_equal(colour_labels, np.concatenate(labels))
  np.testing.assert_array_equal(np.concatenate(labels), np.arange(25, 35) % 8)


def epoch_order(config, epoch, skip_batches=0, batch_size=4):
  images, _ = collect(dataset.create_split(config, True, batch_size, epoch=epoch,
                                           skip_batches=skip_batches))
  return [identify(x)[1].tolist() for x in images]


def test_deterministic_epochs_and_mid_epoch_resume(ours):
  config = data_sources.DataConfig(ours, deterministic=True, shuffle_buffer=10, seed=3)
  first = epoch_order(config, epoch=2)
  assert len(first) == 6
  assert epoch_order(config, epoch=2) == first
  assert epoch_order(config, epoch=3) != first
  assert epoch_order(data_sources.DataConfig(ours, deterministic=True, shuffle_buffer=10, seed=4),
                     epoch=2) != first
  assert epoch_order(config, epoch=2, skip_batches=2) == first[2:]
  assert epoch_order(config, epoch=2, skip_batches=6) == []


def test_skipped_records_are_not_decoded(tmp_path):
  """The first 6 records are not images: decoding them fails, skipping them must not."""
  data_dir = str(tmp_path)
  write_shards(data_dir, "train", 1, 12,
               encoded_fn=lambda i: b"not a jpeg" if i < 6 else None)
  write_info(data_dir, 12, 0)
  config = data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=1)
  with pytest.raises(tf.errors.InvalidArgumentError):
    collect(dataset.create_split(config, True, 3))
  images, _ = collect(dataset.create_split(config, True, 3, skip_batches=2))
  assert [identify(x)[1].tolist() for x in images] == [[6, 7, 8], [9, 10, 11]]


def test_multi_worker_sharding_gives_disjoint_files(tmp_path):
  data_dir = str(tmp_path)
  write_shards(data_dir, "train", 4, 3, label_fn=lambda shard, index: shard)
  write_info(data_dir, 12, 0)
  config = data_sources.DataConfig(data_dir)
  seen = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=2)
    _, labels = collect(dataset.create_split(config, True, 2, input_context=context))
    seen.append(set(np.concatenate(labels).tolist()))
  assert seen == [{0, 2}, {1, 3}]
  too_many = tf.distribute.InputContext(num_input_pipelines=5, input_pipeline_id=0)
  with pytest.raises(ValueError, match="4 train shard"):
    dataset.create_split(config, True, 2, input_context=too_many)


def test_model_garden_records(tmp_path):
  """No dataset_info.json, labels 1..N (0 is background), original image sizes."""
  data_dir = str(tmp_path)
  sizes = [(300, 200), (180, 240), (256, 256), (500, 333)]
  write_shards(data_dir, "train", 2, 4, label_offset=1, size_fn=lambda i: sizes[i % 4])
  write_shards(data_dir, "validation", 1, 6, label_offset=1, start=8,
               size_fn=lambda i: sizes[i % 4])
  config = data_sources.DataConfig(data_dir)
  meta = data_sources.dataset_metadata(config)
  assert meta["format"] == "model_garden" and meta["label_offset"] == 1
  assert meta["num_examples"] == {"train": 8, "validation": 6}
  images, labels = collect(dataset.create_split(config, False, 6))
  assert images[0].shape == (6, S, S, 3)
  np.testing.assert_array_equal(labels[0], np.arange(8, 14) % 8)
  np.testing.assert_array_equal(identify(images[0])[0], labels[0])
  # The offset by flag: keep the stored labels (1-based, background class 0).
  keep = data_sources.DataConfig(data_dir, label_offset=0, num_classes=9)
  _, labels = collect(dataset.create_split(keep, False, 6))
  np.testing.assert_array_equal(labels[0], np.arange(8, 14) % 8 + 1)


def test_tfds_records(tmp_path):
  data_dir = str(tmp_path)
  write_shards(data_dir, "train", 2, 3, tfds=True, size_fn=lambda i: (240, 320))
  write_shards(data_dir, "validation", 1, 4, tfds=True, start=6)
  # What TFDS writes beside its shards: its own dataset_info.json and the label names.
  files.write_json(os.path.join(data_dir, dataset_info.FILENAME), {
      "name": "imagenet2012", "version": "5.1.0",
      "splits": [{"name": "train", "shardLengths": ["3", "3"]},
                 {"name": "validation", "shardLengths": ["4"]}]})
  with open(os.path.join(data_dir, "label.labels.txt"), "w") as f:
    f.write("\n".join(f"n{i:08d}" for i in range(8)) + "\n")
  config = data_sources.DataConfig(data_dir)
  meta = data_sources.dataset_metadata(config)
  assert meta["format"] == "tfds" and meta["num_classes"] == 8
  assert meta["num_examples"] == {"train": 6, "validation": 4}
  assert meta["classes"][2] == ["n00000002", "n00000002"]
  images, labels = collect(dataset.create_split(config, True, 3))
  for x, y in zip(images, labels):
    np.testing.assert_array_equal(identify(x)[0], y)
  _, labels = collect(dataset.create_split(config, False, 4))
  np.testing.assert_array_equal(labels[0], [6, 7, 0, 1])


def test_cache_keeps_decoded_images_across_epochs(tmp_path):
  data_dir = str(tmp_path)
  write_shards(data_dir, "train", 2, 4)
  write_info(data_dir, 8, 0)
  config = data_sources.DataConfig(data_dir, cache=True, deterministic=True, shuffle_buffer=8)
  first = epoch_order(config, epoch=0, batch_size=2)
  for name in os.listdir(data_dir):
    if name.startswith("train-"):
      os.remove(os.path.join(data_dir, name))
  # Only the listing is needed now; the records come from memory.
  write_shards(data_dir, "train", 2, 1)
  second = epoch_order(config, epoch=1, batch_size=2)
  assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(8))
  assert first != second


def test_synthetic():
  config = data_sources.DataConfig("", synthetic=True, num_classes=10)
  ds = dataset.create_split(config, True, 8)
  assert int(ds.cardinality()) == 1_281_167 // 8
  assert int(dataset.create_split(config, True, 8, skip_batches=10).cardinality()) == (
      1_281_167 // 8 - 10)
  images, labels = next(iter(ds))
  assert images.shape == (8, S, S, 3) and images.dtype == tf.uint8
  assert len(np.unique(images.numpy())) > 200
  assert labels.dtype == tf.int32 and 0 <= labels.numpy().min() and labels.numpy().max() < 10
  assert data_sources.dataset_metadata(config)["num_classes"] == 10


# Bad input.


def test_missing_split(tmp_path):
  write_shards(str(tmp_path), "train", 1, 2)
  write_info(str(tmp_path), 2, 0)
  with pytest.raises(FileNotFoundError, match="no validation shards"):
    dataset.create_split(data_sources.DataConfig(str(tmp_path)), False, 2)


def damage(path, record, how):
  """Flips a byte in the data of `record` (bad CRC) or cuts the file inside it."""
  data = bytearray(open(path, "rb").read())
  offset = 0
  for _ in range(record):
    length = int.from_bytes(data[offset:offset + 8], "little")
    offset += length + dataset.RECORD_OVERHEAD
  if how == "crc":
    data[offset + 12 + 100] ^= 0xFF
  else:
    data = data[:offset + 50]
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["crc", "truncate"])
def test_corrupted_shard_is_named_in_bounded_time(tmp_path, how):
  data_dir = str(tmp_path)
  write_shards(data_dir, "train", 3, 4)
  write_info(data_dir, 12, 0)
  bad = os.path.join(data_dir, features.shard_name("train", 1, 3))
  damage(bad, 2, how)
  for train in (True, False):
    if not train:
      write_shards(data_dir, "validation", 2, 3)
      damage(os.path.join(data_dir, features.shard_name("validation", 1, 2)), 1, how)
      bad = features.shard_name("validation", 1, 2)
    start = time.monotonic()
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"Corrupted or truncated.*{bad}"):
      collect(dataset.create_split(data_sources.DataConfig(data_dir), train, 2))
    assert time.monotonic() - start < 60


def test_image_that_is_not_256_in_a_256_dataset(tmp_path):
  data_dir = str(tmp_path)
  write_shards(data_dir, "validation", 1, 3, size_fn=lambda i: (200, 300) if i == 1 else (S, S))
  write_info(data_dir, 0, 3)
  with pytest.raises(tf.errors.InvalidArgumentError, match="not 256x256.*img0001.JPEG"):
    collect(dataset.create_split(data_sources.DataConfig(data_dir), False, 3))


def test_label_out_of_range(tmp_path):
  data_dir = str(tmp_path)
  write_shards(data_dir, "validation", 1, 2, label_fn=lambda shard, index: 7 + index)
  write_info(data_dir, 0, 2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="Label out of range.*img0001"):
    collect(dataset.create_split(data_sources.DataConfig(data_dir), False, 2))
