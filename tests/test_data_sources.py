"""Tests of keras_alexnet.data_sources: what a data_dir holds (shards, format, counts, classes)
and DataConfig's checks, on tiny shards written by tests/test_dataset.py's helpers (real JPEGs,
real TFRecords)."""

import os

import pytest
import tensorflow as tf

from keras_alexnet import data_sources
from keras_alexnet import dataset
from keras_alexnet import features
from test_dataset import S
from test_dataset import ours  # noqa: F401 -- the fixture: 4x6 train, 2x5 validation shards
from test_dataset import write_info
from test_dataset import write_shards


def test_metadata(ours):
  meta = data_sources.dataset_metadata(data_sources.DataConfig(ours))
  assert meta["format"] == "keras_alexnet" and meta["num_classes"] == 8
  assert meta["num_examples"] == {"train": 24, "validation": 10}
  assert meta["classes"][3] == ["n00000003", "class 3"] and meta["image_size"] == S


# Bad input.


def test_no_shards(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfrecords.build"):
    data_sources.dataset_metadata(data_sources.DataConfig(str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    dataset.create_split(data_sources.DataConfig(str(tmp_path / "nope")), True, 2)


def test_temporary_and_foreign_files_are_not_shards(tmp_path):
  write_shards(str(tmp_path), "train", 2, 1)
  write_info(str(tmp_path), 2, 0)
  for name in (".tmp-train-00001-of-00002", "train-00001-of-00002.host-12.tmp",
               "train-00000-of-00002.json", "notes-train.txt"):
    (tmp_path / name).write_bytes(b"not a shard")
  assert [os.path.basename(p) for p in data_sources.list_shards(str(tmp_path), "train")] == [
      "train-00000-of-00002", "train-00001-of-00002"]


def test_incomplete_shard_set(tmp_path):
  write_shards(str(tmp_path), "train", 3, 1)
  os.remove(tmp_path / features.shard_name("train", 1, 3))
  with pytest.raises(ValueError, match="missing indices \\[1\\]"):
    data_sources.dataset_metadata(data_sources.DataConfig(str(tmp_path)))


def test_records_of_no_known_schema(tmp_path):
  path = str(tmp_path / features.shard_name("train", 0, 1))
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(tf.train.Example(features=tf.train.Features(feature={
        "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))
    })).SerializeToString())
  with pytest.raises(ValueError, match=r"no known schema.*\['pixels'\]"):
    dataset.create_split(data_sources.DataConfig(str(tmp_path)), True, 1)


def test_records_that_do_not_match_the_format_asked_for(ours):
  with pytest.raises(ValueError, match="format 'tfds' needs"):
    data_sources.dataset_metadata(data_sources.DataConfig(ours, format="tfds"))


def test_a_file_that_is_not_a_tfrecord(tmp_path):
  (tmp_path / features.shard_name("train", 0, 1)).write_bytes(b"hello, this is text" * 20)
  with pytest.raises(ValueError, match="train-00000-of-00001.*corrupted or not a TFRecord"):
    data_sources.dataset_metadata(data_sources.DataConfig(str(tmp_path)))


@pytest.mark.parametrize("field,value,message", [
    ("format", "csv", "format"), ("shuffle_buffer", 0, "shuffle_buffer"),
    ("num_parallel_calls", 0, "num_parallel_calls"),
    ("data_service_address", "http://x/y", "grpc://HOST:PORT"),
])
def test_bad_config(ours, field, value, message):
  with pytest.raises(ValueError, match=message):
    dataset.create_split(data_sources.DataConfig(ours, **{field: value}), True, 2)
