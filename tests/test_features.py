"""keras_alexnet.features: the record schema the builder writes and the pipeline reads."""

import tensorflow as tf

from keras_alexnet import features


def test_example_round_trips_through_the_feature_spec():
  record = features.make_example(b"\xff\xd8jpeg", label=7, synset="n01440764",
                                 text="tench, Tinca tinca", filename="a/b.JPEG", height=256,
                                 width=300)
  parsed = tf.io.parse_single_example(record, features.FEATURE_SPEC)
  assert parsed[features.ENCODED].numpy() == b"\xff\xd8jpeg"
  assert parsed[features.LABEL].numpy() == 7
  assert parsed[features.SYNSET].numpy() == b"n01440764"
  assert parsed[features.TEXT].numpy() == b"tench, Tinca tinca"
  assert parsed[features.FILENAME].numpy() == b"a/b.JPEG"
  assert (parsed[features.HEIGHT].numpy(), parsed[features.WIDTH].numpy()) == (256, 300)
  assert parsed[features.CHANNELS].numpy() == 3
  assert parsed[features.FORMAT].numpy() == b"JPEG"
  assert parsed[features.COLORSPACE].numpy() == b"RGB"


def test_serialization_is_deterministic_and_sorted():
  kwargs = dict(label=1, synset="s", text="t", filename="f", height=2, width=3)
  first = features.make_example(b"x", **kwargs)
  assert all(features.make_example(b"x", **kwargs) == first for _ in range(20))
  # Deterministic protobuf serialization writes map entries sorted by key.
  keys = list(tf.train.Example.FromString(first).features.feature)
  offsets = [first.index(k.encode()) for k in sorted(keys)]
  assert offsets == sorted(offsets)


def test_shard_names_are_the_model_gardens():
  assert features.shard_name("train", 0, 1024) == "train-00000-of-01024"
  assert features.shard_name("validation", 127, 128) == "validation-00127-of-00128"
