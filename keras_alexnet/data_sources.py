"""What a data_dir holds, found out once before any reading: its shards, their format, counts and
class names; and DataConfig, the settings of the input pipeline, with their checks.

It reads three layouts of ImageNet-style TFRecords:
- "keras_alexnet": this project's builder (tfrecords/build.py): 256x256 JPEGs (or raw pixels),
  the Model Garden's keys, 0-based labels, a dataset_info.json with counts, classes and pixel
  statistics.
- "model_garden": the TensorFlow Model Garden's converter: the same keys, original image sizes,
  labels 1..1000 with 0 for background (label_offset 1 by default).
- "tfds": tensorflow-datasets' imagenet2012 builder: keys image, label, file_name; files named
  imagenet2012-train.tfrecord-00000-of-01024.

`resolve` sniffs the format (dataset_info.json's "format", else TFDS's own dataset_info.json,
else the first record's keys) into a `Source`, which the pipeline (keras_alexnet.dataset) reads
by; `dataset_metadata` is what train, evaluate and export need of it. DataConfig lives here
because the resolution reads it (its checks too). Imports the record schema (features),
dataset_info, decoding (the stored size) and the packaged class names (data), nothing later.
"""

import dataclasses
import functools
import glob
import os
import re
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from keras_alexnet import data as ilsvrc
from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import errors
from keras_alexnet import features

FORMATS = ("keras_alexnet", "model_garden", "tfds")
SPLITS = ("train", "validation", "test")   # test: ILSVRC-2010 (Table 1), the builder's
BUILD_COMMAND = "python -m tfrecords.build --input=... --output_dir=..."
# ILSVRC-2012 (the paper, section 2): used for Model Garden/TFDS shards without counts.
IMAGENET_NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}
IMAGENET_NUM_SHARDS = {"train": 1024, "validation": 128}
IMAGENET_NUM_CLASSES = 1000
# What image/encoded holds in this project's shards (dataset_info.json's "encoding"): a JPEG,
# or the 256x256x3 uint8 pixels, row-major RGB (decode-free; 196,608 bytes an image).
ENCODINGS = ("jpeg", "raw")
DCT_METHODS = ("", "INTEGER_ACCURATE", "INTEGER_FAST")

TFDS_KEYS = ("image", "label", "file_name")
# The keys a format's records must have.
SCHEMA_KEYS = {"keras_alexnet": (features.ENCODED, features.LABEL),
               "model_garden": (features.ENCODED, features.LABEL),
               "tfds": TFDS_KEYS[:2]}
_SHARD_RE = re.compile(r"^(?:.*-)?(?P<split>train|validation|test)(?:\.tfrecord)?"
                       r"-(?P<index>\d{5})-of-(?P<total>\d{5})$")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the data is and how to read it. Defaults suit one host with its own shards."""
  data_dir: str
  format: str = "auto"                  # "auto" | "keras_alexnet" | "model_garden" | "tfds"
  label_offset: Optional[int] = None    # None: from dataset_info.json or the format.
  shuffle_buffer: int = 10_000
  num_parallel_calls: int = tf.data.AUTOTUNE
  private_threadpool_size: int = 0      # 0: TF's shared pool.
  cache: bool = False                   # Keep the decoded images in memory after epoch 0.
  deterministic: bool = False           # Reproducible order (needed for mid-epoch resume).
  seed: int = 0
  data_service_address: Optional[str] = None   # grpc://HOST:PORT of a tf.data dispatcher.
  synthetic: bool = False               # Random batches, no files: benchmarks the model.
  num_classes: Optional[int] = None     # None: from dataset_info.json or the format.
  # Options, off by default (BUILD_NOTES, "Input pipeline at accelerator scale", has what
  # they cost and change). decode_crop: training decodes only a random 224x224 window of each
  # stored JPEG (exactly the full decode's window) and yields (crops, labels, offsets);
  # preprocessing.augment_crops does the rest in the step.
  decode_crop: bool = False
  # decode_jpeg's IDCT. "" is TF's default, which is libjpeg's JDCT_IFAST ("INTEGER_FAST":
  # the same pixels bit for bit, checked); "INTEGER_ACCURATE" is JDCT_ISLOW, libjpeg's and
  # PIL's default, up to ~5 levels apart from the fast one and slower.
  dct_method: str = ""


@dataclasses.dataclass(frozen=True)
class Source:
  """What `resolve` finds out about a data_dir once: the format and how to read it."""
  format: str
  label_offset: int
  num_classes: int
  image_size: Optional[int]   # 256: stored at 256x256; None: original sizes, resized here.
  classes: Optional[list]
  num_examples: dict
  info: Optional[dict]
  encoding: str = "jpeg"      # "jpeg" | "raw": what image/encoded holds (keras_alexnet only)


def check_config(config: DataConfig):
  """Raises ValueError naming the DataConfig field when a setting is not allowed."""
  def bad(what, got, allowed):
    raise errors.invalid(f"DataConfig.{what}", got, allowed)
  if config.format not in ("auto",) + FORMATS:
    bad("format", config.format, f"'auto' or one of {FORMATS}")
  if config.shuffle_buffer < 1:
    bad("shuffle_buffer", config.shuffle_buffer, "an integer >= 1 (1 turns shuffling off)")
  if config.num_parallel_calls != tf.data.AUTOTUNE and config.num_parallel_calls < 1:
    bad("num_parallel_calls", config.num_parallel_calls, "tf.data.AUTOTUNE (-1) or >= 1")
  if config.private_threadpool_size < 0:
    bad("private_threadpool_size", config.private_threadpool_size, ">= 0 (0: shared pool)")
  if config.num_classes is not None and config.num_classes < 2:
    bad("num_classes", config.num_classes, "None or >= 2")
  address = config.data_service_address
  if address is not None and not re.match(r"^(grpc://)?[^:/\s]+:\d+$", address):
    bad("data_service_address", address, "grpc://HOST:PORT (the dispatcher)")
  if config.dct_method not in DCT_METHODS:
    bad("dct_method", config.dct_method, f"one of {DCT_METHODS} ('': TF's default, "
        "INTEGER_FAST)")
  if config.decode_crop and config.cache:
    bad("decode_crop", config.decode_crop, "False with cache=True (a cached epoch would keep "
        "one epoch's crops)")
  if config.cache and address is not None:
    bad("cache", config.cache, "False with a tf.data service (the workers hold no cache "
        "across epochs)")


def list_shards(data_dir: str, split: str) -> list:
  """The sorted shard paths of `split` (train-00000-of-01024, or TFDS's
  imagenet2012-train.tfrecord-00000-of-01024). Raises ValueError when the set is incomplete
  (a shard missing, or shards of two builds mixed)."""
  if split not in SPLITS:
    raise errors.invalid("split", split, f"one of {SPLITS}")
  found = {}
  for path in tf.io.gfile.glob(os.path.join(glob.escape(data_dir), f"*{split}*-of-*")):
    match = _SHARD_RE.match(os.path.basename(path))
    # Hidden files are other tools' temporaries (the builder's start with ".tmp-").
    if match and match["split"] == split and not os.path.basename(path).startswith("."):
      found[path] = (int(match["index"]), int(match["total"]))
  if not found:
    return []
  totals = {total for _, total in found.values()}
  indices = sorted(index for index, _ in found.values())
  total = max(totals)
  if len(totals) > 1 or indices != list(range(total)):
    missing = sorted(set(range(total)) - set(indices))
    raise ValueError(
        f"{data_dir}: the {split} shards are incomplete or mixed: expected "
        f"{features.shard_name(split, 0, total)} .. -of-{total:05d} exactly once each; found "
        f"{len(found)} file(s) with totals {sorted(totals)}"
        + (f", missing indices {missing[:10]}{'...' if len(missing) > 10 else ''}"
           if missing else "") + ". Rebuild or finish copying the dataset.")
  return sorted(found, key=lambda p: found[p][0])


@functools.lru_cache(maxsize=32)
def shard_sizes(files: tuple) -> tuple:
  """Byte sizes of the shards, read once per process: the trainer builds every epoch's
  dataset when it starts (90 for the paper), and a stat per shard per epoch is ~92,000 calls
  for ImageNet's 1,024 shards, slow on remote storage. A shard never changes once written
  (the builder renames each into place whole), so sizes cached by path stay right."""
  return tuple(tf.io.gfile.stat(path).length for path in files)


def check_shards(data_dir: str, split: str, files: list, sizes, info: Optional[dict]) -> None:
  """Fails, naming the shard, when a shard's size disagrees with what the builder recorded
  (dataset_info.json's splits.<split>.shard_bytes), or a shard is empty where records are
  expected. A stat per shard, which create_split makes anyway: cheap enough for every epoch,
  and a shard cut short or emptied (a failed copy, a full disk) fails before training on
  part of the data instead of after it.
  """
  meta = ((info or {}).get("splits") or {}).get(split) or {}
  recorded = meta.get("shard_bytes")
  lengths = meta.get("shard_lengths")
  where = os.path.join(data_dir, dataset_info.FILENAME)
  if isinstance(recorded, list) and len(recorded) == len(files):
    bad = [(f, n, r) for f, n, r in zip(files, sizes, recorded) if r is not None and n != r]
    if bad:
      path, size, expected = bad[0]
      raise ValueError(
          f"{path} is {size:,} bytes but {where} records {expected:,}: the shard is damaged, "
          f"cut short or from another build ({len(bad)} of {len(files)} {split} shards "
          "differ). Rebuild or re-copy it.")
    return
  for i, (path, size) in enumerate(zip(files, sizes)):
    expected_records = lengths[i] if isinstance(lengths, list) and len(lengths) == len(
        files) else None
    if size == 0 and expected_records != 0:
      raise ValueError(
          f"{path} is empty (0 bytes)" + (f" but {where} records {expected_records} examples "
                                          "in it" if expected_records else "")
          + ": a shard cut short or a failed copy. Rebuild or re-copy it.")


def _first_record(path: str) -> dict:
  """The feature map of the shard's first record."""
  try:
    for record in tf.data.TFRecordDataset(path).take(1):
      return dict(tf.train.Example.FromString(record.numpy()).features.feature)
  except (tf.errors.DataLossError, tf.errors.OpError) as e:
    raise ValueError(f"{path}: cannot read its first record ({e.message.strip()}): the shard "
                     "is corrupted or not a TFRecord file.") from None
  except Exception as e:  # protobuf's DecodeError: not a tf.train.Example.
    raise ValueError(f"{path}: the first record is not a tf.train.Example ({e}).") from None
  raise ValueError(f"{path}: the shard holds no records.")



def _encoding(data_dir, first, record, ours) -> str:
  """"jpeg" or "raw": dataset_info.json's "encoding" (absent: jpeg), checked against the
  image/format of the first record, so that a dataset_info.json and shards of different
  builds fail here, before any reading, rather than as a decoding error without a file."""
  info_path = os.path.join(data_dir, dataset_info.FILENAME)
  encoding = (ours or {}).get("encoding", "jpeg")
  if encoding not in ENCODINGS:
    raise ValueError(f"{info_path}: encoding {encoding!r}; allowed: {list(ENCODINGS)}.")
  stored = record.get(features.FORMAT)
  stored = (stored.bytes_list.value[0].decode("utf-8", "replace")
            if stored is not None and stored.bytes_list.value else features.FORMAT_JPEG)
  if (stored.upper() == features.FORMAT_RAW) != (encoding == "raw"):
    raise ValueError(
        f"{info_path} says encoding {encoding!r}, but {first} holds image/format "
        f"{stored!r} records ({features.FORMAT_RAW!r}: raw pixels, else encoded images). The "
        "dataset_info.json and the shards come from different builds: rebuild, or copy the "
        "matching dataset_info.json.")
  return encoding


def _format_of_keys(keys, has_info):
  if features.ENCODED in keys and features.LABEL in keys:
    return "keras_alexnet" if has_info else "model_garden"
  if "image" in keys and "label" in keys:
    return "tfds"
  return None


def _is_tfds_info(info):
  # TFDS writes its own dataset_info.json (name, version, splits as a list...).
  return info is not None and "format" not in info and "name" in info


def resolve(config: DataConfig, counts: bool = True) -> Source:
  """Finds the format, label offset, class count and (counts=True) split sizes of
  config.data_dir. Without counts in a dataset_info.json, counting means reading every record,
  which create_split does not need."""
  check_config(config)
  data_dir = config.data_dir
  if not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(f"data_dir {data_dir!r} does not exist. Build the shards with "
                            f"`{BUILD_COMMAND}`.")
  files = {split: list_shards(data_dir, split) for split in SPLITS}
  if not any(files.values()):
    raise FileNotFoundError(
        f"{data_dir} holds no TFRecord shards (train-00000-of-NNNNN, validation-..., or TFDS's "
        f"imagenet2012-train.tfrecord-00000-of-NNNNN). Build them with `{BUILD_COMMAND}`.")
  info = dataset_info.read(data_dir)
  tfds_info = _is_tfds_info(info)
  ours = info if info is not None and not tfds_info else None
  first = next(f for split in SPLITS for f in files[split])
  record = _first_record(first)
  keys = sorted(record)
  detected = _format_of_keys(keys, ours is not None)

  if config.format != "auto":
    fmt = config.format
  elif ours is not None and "format" in ours:
    fmt = ours["format"]
  elif tfds_info:
    fmt = "tfds"
  else:
    fmt = detected
  if fmt is None:
    fmt = "keras_alexnet"   # No schema matched: the check below says so.
  if fmt not in FORMATS:
    raise ValueError(f"{data_dir}: unknown format {fmt!r} in {dataset_info.FILENAME}; "
                     f"expected one of {FORMATS}.")
  needed = SCHEMA_KEYS[fmt]
  if not set(needed) <= set(keys):
    raise ValueError(
        f"{first}: the records match no known schema: the first record has keys {keys}; "
        f"format {fmt!r} needs {list(needed)} (known: keras_alexnet and model_garden records "
        f"{list(SCHEMA_KEYS['keras_alexnet'])}, tfds records {list(SCHEMA_KEYS['tfds'])}).")

  if config.label_offset is not None:
    label_offset = config.label_offset
  elif ours is not None and "label_offset" in ours:
    label_offset = int(ours["label_offset"])
  elif fmt == "model_garden":
    label_offset = 1
    logging.info("%s: Model Garden records label classes 1..1000 (0 is background); "
                 "subtracting 1. Pass label_offset=0, num_classes=1001 to keep background.",
                 data_dir)
  else:
    label_offset = 0

  classes = None
  if ours is not None:
    classes = ours.get("classes")
  elif tf.io.gfile.exists(os.path.join(data_dir, "label.labels.txt")):
    with tf.io.gfile.GFile(os.path.join(data_dir, "label.labels.txt")) as f:
      classes = _wordnet_names([[name, name] for name in f.read().split()])
  elif fmt in ("model_garden", "tfds") and config.num_classes in (None, IMAGENET_NUM_CLASSES):
    classes = _imagenet_classes(fmt, data_dir, files, info if tfds_info else None, first,
                                label_offset)
  if config.num_classes is not None:
    num_classes = config.num_classes
  elif ours is not None and ours.get("num_classes"):
    num_classes = int(ours["num_classes"])
  elif classes:
    num_classes = len(classes)
  elif fmt in ("model_garden", "tfds"):
    num_classes = IMAGENET_NUM_CLASSES
  else:
    raise ValueError(f"{data_dir}/{dataset_info.FILENAME} has no num_classes; pass "
                     "num_classes explicitly.")

  image_size, encoding = None, "jpeg"
  if fmt == "keras_alexnet":
    encoding = _encoding(data_dir, first, record, ours)
    image_size = (ours or {}).get("image_size", decoding.STORED_SIZE)
    if image_size not in (None, decoding.STORED_SIZE):
      raise ValueError(f"{data_dir}: image_size {image_size!r} in {dataset_info.FILENAME}; the "
                       f"pipeline reads {decoding.STORED_SIZE}x{decoding.STORED_SIZE} "
                       "images or original sizes (null).")
    if encoding == "raw" and image_size != decoding.STORED_SIZE:
      raise ValueError(f"{data_dir}/{dataset_info.FILENAME}: encoding 'raw' needs image_size "
                       f"{decoding.STORED_SIZE} (raw pixels carry no shape); found "
                       f"{image_size!r}.")

  num_examples = {split: _num_examples(data_dir, split, files[split], ours, info if tfds_info
                                       else None) for split in SPLITS
                  if split != "test" or files[split]} if counts else {}   # test: if present
  return Source(format=fmt, label_offset=label_offset, num_classes=num_classes,
                 image_size=image_size, classes=classes, num_examples=num_examples, info=ours,
                 encoding=encoding)


def _wordnet_names(classes: list) -> list:
  """[wnid, wnid] pairs with the packaged WordNet names, when every id is an ILSVRC-2012 wnid
  (TFDS's label.labels.txt lists the ids only); other ids stay as they are."""
  names = dict(ilsvrc.ilsvrc2012_classes())
  if not all(wnid in names for wnid, _ in classes):
    return classes
  return [[wnid, names[wnid]] for wnid, _ in classes]


def _first_label_and_synset(path: str):
  record = next(iter(tf.data.TFRecordDataset(path).take(1))).numpy()
  feature = tf.train.Example.FromString(record).features.feature
  label = feature[features.LABEL].int64_list.value
  synset = feature[features.SYNSET].bytes_list.value if features.SYNSET in feature else []
  return (int(label[0]) if label else None), (synset[0].decode() if synset else None)


def _imagenet_classes(fmt, data_dir, files, tfds_info, first, label_offset):
  """The packaged 1000 ILSVRC-2012 classes (wnid, WordNet name) for ImageNet shards that do
  not name their classes, when what they hold says their labels are those classes in the
  usual sorted-wnid order; otherwise None (predictions then show label numbers).

  - tfds: TFDS's imagenet2012 family (its dataset_info.json's name, or shards named
    imagenet2012-<split>.tfrecord-*), whose label feature is the sorted wnids.
  - model_garden: the first record's image/class/synset is the packaged wnid of its label.
  """
  packaged = [list(c) for c in ilsvrc.ilsvrc2012_classes()]
  if fmt == "tfds":
    name = str((tfds_info or {}).get("name", ""))
    shard_names = [os.path.basename(f) for split in SPLITS for f in files[split]]
    if name.startswith("imagenet2012") or (
        not name and all(n.startswith("imagenet2012-") for n in shard_names)):
      return packaged
    return None
  label, synset = _first_label_and_synset(first)
  if label is not None and 0 <= label - label_offset < len(packaged) and (
      synset == packaged[label - label_offset][0]):
    return packaged
  return None


def _num_examples(data_dir, split, files, ours, tfds_info):
  if not files:
    return 0
  if ours is not None:
    count = ours.get("splits", {}).get(split, {}).get("num_examples")
    if count is not None:
      return int(count)
  if tfds_info is not None:
    for entry in tfds_info.get("splits", []):
      if isinstance(entry, dict) and entry.get("name") == split and "shardLengths" in entry:
        return sum(int(n) for n in entry["shardLengths"])
  if len(files) == IMAGENET_NUM_SHARDS.get(split):
    logging.info("%s: no example count for %s; assuming ILSVRC-2012's %d (%d shards).",
                 data_dir, split, IMAGENET_NUM_EXAMPLES[split], len(files))
    return IMAGENET_NUM_EXAMPLES[split]
  logging.info("%s: counting the %s records (no count in a dataset_info.json).", data_dir, split)
  return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1))


def dataset_metadata(config: DataConfig) -> dict:
  """format, num_classes, classes ([wnid_or_name, text] in label order, or None when the
  records do not say), num_examples {"train": N, "validation": M}, label_offset, image_size,
  encoding ("jpeg" or "raw"; None for synthetic data).

  Raises FileNotFoundError naming the builder command when data_dir holds no shards.
  """
  if config.synthetic:
    return dict(format="synthetic", num_classes=config.num_classes or IMAGENET_NUM_CLASSES,
                classes=None, num_examples=dict(IMAGENET_NUM_EXAMPLES), label_offset=0,
                image_size=decoding.STORED_SIZE, encoding=None)
  source = resolve(config)
  return dict(format=source.format, num_classes=source.num_classes, classes=source.classes,
              num_examples=dict(source.num_examples), label_offset=source.label_offset,
              image_size=source.image_size, encoding=source.encoding)
