"""The one TFRecord schema: what the builder (tfrecords/) writes and the input pipeline reads.

The keys are those of the TensorFlow Model Garden's ImageNet TFRecords, so existing tools read
these shards. One difference, recorded in dataset_info.json as "label_offset": 0 — labels
here are 0-based (the index of the wnid in the sorted list of 1000, as in Caffe, TFDS, Keras
and torchvision), whereas the Model Garden's converter writes 1..1000 with 0 for background.

TensorFlow is imported on first use (FEATURE_SPEC, make_example), not by this module itself;
the package's __init__ imports it anyway (it registers the Keras layers: BUILD_NOTES.md,
"Packaging and first contact").
"""

import functools

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
COLORSPACE = "image/colorspace"
LABEL = "image/class/label"
SYNSET = "image/class/synset"
TEXT = "image/class/text"
FILENAME = "image/filename"

# image/format: what image/encoded holds. "RAW" (builder --encoding=raw): the 256x256x3 uint8
# RGB pixels, row-major, 196,608 bytes; the other keys are the same. dataset_info.json says
# which ("encoding": "jpeg" | "raw").
FORMAT_JPEG = "JPEG"
FORMAT_RAW = "RAW"


@functools.cache
def _feature_spec() -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {
      ENCODED: tf.io.FixedLenFeature([], tf.string),
      FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="JPEG"),
      HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      CHANNELS: tf.io.FixedLenFeature([], tf.int64, default_value=3),
      COLORSPACE: tf.io.FixedLenFeature([], tf.string, default_value="RGB"),
      LABEL: tf.io.FixedLenFeature([], tf.int64),
      SYNSET: tf.io.FixedLenFeature([], tf.string, default_value=""),
      TEXT: tf.io.FixedLenFeature([], tf.string, default_value=""),
      FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
  }


def __getattr__(name: str):
  # FEATURE_SPEC: {key: tf.io.FixedLenFeature} for tf.io.parse_example, built on first use.
  if name == "FEATURE_SPEC":
    return _feature_spec()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bytes(value):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(value, str):
    value = value.encode("utf-8")
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(encoded: bytes, *, label: int, synset: str, text: str, filename: str,
                 height: int, width: int, image_format: str = FORMAT_JPEG) -> bytes:
  """One serialized tf.train.Example for an RGB JPEG (or, image_format=FORMAT_RAW, the raw
  uint8 pixels height x width x 3).

  Serialized with deterministic=True: protobuf writes map fields (Features.feature is a
  map) in no fixed order otherwise, and the builder promises byte-identical shards.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  example = tf.train.Example(features=tf.train.Features(feature={
      ENCODED: _bytes(encoded),
      FORMAT: _bytes(image_format),
      HEIGHT: _int64(height),
      WIDTH: _int64(width),
      CHANNELS: _int64(3),
      COLORSPACE: _bytes("RGB"),
      LABEL: _int64(label),
      SYNSET: _bytes(synset),
      TEXT: _bytes(text),
      FILENAME: _bytes(filename),
  }))
  return example.SerializeToString(deterministic=True)


def shard_name(split: str, index: int, num_shards: int) -> str:
  """train-00000-of-01024, validation-00000-of-00128 (the Model Garden's names)."""
  return f"{split}-{index:05d}-of-{num_shards:05d}"
