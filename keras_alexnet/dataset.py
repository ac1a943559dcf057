"""The input pipeline: TFRecord shards -> uint8 [B, 256, 256, 3] batches and int32 labels.

The CPU does only what must happen on the CPU, reading and decoding; cropping, mirroring,
lighting and the mean (keras_alexnet.preprocessing.augment) run on the accelerator inside the
training step. One function, `create_split`, in a fixed order:

  files -> interleave (read, parse) -> shuffle -> (skip) -> decode -> batch -> prefetch

Parsing runs in the readers, batched per READ_BATCH records, rather than with the decoding:
per record, a separate parse cost ~15% of the CPU time that decoding takes.

It reads three layouts of ImageNet-style TFRecords:
- "keras_alexnet": this project's builder (tfrecords/build.py): 256x256 JPEGs, the Model
  Garden's keys, 0-based labels, a dataset_info.json with counts, classes and pixel statistics.
- "model_garden": the TensorFlow Model Garden's converter: the same keys, original image sizes,
  labels 1..1000 with 0 for background (label_offset 1 by default).
- "tfds": tensorflow-datasets' imagenet2012 builder: keys image, label, file_name; files named
  imagenet2012-train.tfrecord-00000-of-01024.
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
from keras_alexnet import errors
from keras_alexnet import features
from keras_alexnet import preprocessing

FORMATS = ("keras_alexnet", "model_garden", "tfds")
SPLITS = ("train", "validation", "test")   # test: ILSVRC-2010 (Table 1), the builder's
BUILD_COMMAND = "python -m tfrecords.build --input=... --output_dir=..."
# ILSVRC-2012 (the paper, section 2): used for Model Garden/TFDS shards without counts.
IMAGENET_NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}
IMAGENET_NUM_SHARDS = {"train": 1024, "validation": 128}
IMAGENET_NUM_CLASSES = 1000
# Files read at once by the interleave; more than the cores so that reads overlap decoding.
CYCLE_LENGTH = 16
# A TFRecord frames each record with an 8-byte length, its 4-byte CRC and the data's 4-byte CRC.
RECORD_OVERHEAD = 16
# Records per step of the shard reader's integrity bookkeeping, parsing and label checks.
READ_BATCH = 64
# What image/encoded holds in this project's shards (dataset_info.json's "encoding"): a JPEG,
# or the 256x256x3 uint8 pixels, row-major RGB (decode-free; 196,608 bytes an image).
ENCODINGS = ("jpeg", "raw")
RAW_BYTES = preprocessing.STORED_SIZE * preprocessing.STORED_SIZE * 3
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
class _Source:
  """What `_resolve` finds out about a data_dir once: the format and how to read it."""
  format: str
  label_offset: int
  num_classes: int
  image_size: Optional[int]   # 256: stored at 256x256; None: original sizes, resized here.
  classes: Optional[list]
  num_examples: dict
  info: Optional[dict]
  encoding: str = "jpeg"      # "jpeg" | "raw": what image/encoded holds (keras_alexnet only)


def _check_config(config: DataConfig):
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


# ---------------------------------------------------------------------------------------------
# Files.


def list_shards(data_dir: str, split: str) -> list:
  """The sorted shard paths of `split` (train-00000-of-01024, or TFDS's
  imagenet2012-train.tfrecord-00000-of-01024). Raises ValueError when the set is incomplete
  (a shard missing, or shards of two builds mixed)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; received {split!r}.")
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
def _shard_sizes(files: tuple) -> tuple:
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


def _first_record_keys(path: str) -> list:
  return sorted(_first_record(path))


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


def _resolve(config: DataConfig, counts: bool = True) -> _Source:
  """Finds the format, label offset, class count and (counts=True) split sizes of
  config.data_dir. Without counts in a dataset_info.json, counting means reading every record,
  which create_split does not need."""
  _check_config(config)
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
    image_size = (ours or {}).get("image_size", preprocessing.STORED_SIZE)
    if image_size not in (None, preprocessing.STORED_SIZE):
      raise ValueError(f"{data_dir}: image_size {image_size!r} in {dataset_info.FILENAME}; the "
                       f"pipeline reads {preprocessing.STORED_SIZE}x{preprocessing.STORED_SIZE} "
                       "images or original sizes (null).")
    if encoding == "raw" and image_size != preprocessing.STORED_SIZE:
      raise ValueError(f"{data_dir}/{dataset_info.FILENAME}: encoding 'raw' needs image_size "
                       f"{preprocessing.STORED_SIZE} (raw pixels carry no shape); found "
                       f"{image_size!r}.")

  num_examples = {split: _num_examples(data_dir, split, files[split], ours, info if tfds_info
                                       else None) for split in SPLITS
                  if split != "test" or files[split]} if counts else {}   # test: if present
  return _Source(format=fmt, label_offset=label_offset, num_classes=num_classes,
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
                image_size=preprocessing.STORED_SIZE, encoding=None)
  source = _resolve(config)
  return dict(format=source.format, num_classes=source.num_classes, classes=source.classes,
              num_examples=dict(source.num_examples), label_offset=source.label_offset,
              image_size=source.image_size, encoding=source.encoding)


# ---------------------------------------------------------------------------------------------
# Records -> (image, label).


# The pipeline's functions have no Python control flow on tensors: AutoGraph would only cost
# tracing time (and re-reads the source, which breaks if the file changed since import).
_no_autograph = tf.autograph.experimental.do_not_convert


def _assert(condition, data):
  """An Assert op that fails with `data` when `condition` is false. tf.debugging.Assert wraps
  string data in a tf.cond, a function call per image that cost about 10% of the pipeline."""
  return tf.raw_ops.Assert(condition=condition, data=[tf.convert_to_tensor(x) for x in data],
                           summarize=10)


def _first_where(mask, *values):
  """values[i][j] at the first j where mask[j] (or at 0 if none; a padding value when the
  batch is empty): what an error message shows of a batch."""
  first = tf.argmax(tf.concat([tf.cast(mask, tf.int32), [0]], 0))
  return [tf.gather(tf.concat([v, tf.zeros([1], v.dtype)], 0), first) for v in values]


def _reader(source: _Source):
  """(shard path, file size) -> dataset of READ_BATCH-record batches (encoded image, int32
  label, where), failing with the shard's name on corruption and with the image's on a bad
  label. `where` ("<shard path> image <file name>") is what a later per-image check names;
  raw shards, checked whole here, have no `where`.

  TFRecordDataset reports a bad CRC or a truncated file as "corrupted record at N", without
  the file. So the reader's error is swallowed (ignore_errors: the reader then stops at that
  record) and the bytes read are checked against the file size after the shard's last record:
  a shard that was not read to its end fails here, naming itself, right after the bad record.
  Everything per record that can be vectorized runs here per READ_BATCH records (an empty
  batch marks the end): the bookkeeping, the parse, the label check and, for raw shards, the
  size check. Per record they cost more than the rest of the reading (BUILD_NOTES).
  """
  if source.format == "tfds":
    encoded_key, label_key, name_key = TFDS_KEYS
  else:
    encoded_key, label_key, name_key = features.ENCODED, features.LABEL, features.FILENAME
  spec = {encoded_key: tf.io.FixedLenFeature([], tf.string),
          label_key: tf.io.FixedLenFeature([], tf.int64),
          name_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
  raw = source.encoding == "raw"
  offset, num_classes = source.label_offset, source.num_classes

  @_no_autograph
  def count(read, records):
    read += tf.reduce_sum(tf.cast(tf.strings.length(records), tf.int64) + RECORD_OVERHEAD)
    return read, (records, read)

  @_no_autograph
  def read_shard(path, size):
    batches = tf.data.TFRecordDataset(path).ignore_errors(log_warning=True).batch(READ_BATCH)
    batches = batches.concatenate(tf.data.Dataset.from_tensors(tf.constant([], tf.string)))

    @_no_autograph
    def check_and_parse(records, read):
      complete = tf.logical_or(tf.size(records) > 0, tf.equal(read, size))
      assertion = _assert(complete, [
          "Corrupted or truncated TFRecord shard (bad CRC or length):", path, "read", read,
          "of", size, "bytes. Rebuild or re-copy this shard."])
      with tf.control_dependencies([assertion]):
        examples = tf.io.parse_example(records, spec)
      encoded, names, stored = examples[encoded_key], examples[name_key], examples[label_key]
      label = stored - offset
      # Conditions and messages from a few ops per batch: a boolean_mask of the names cost
      # ~15 us per record. The message names the first offending record of the batch.
      bad = tf.logical_or(label < 0, label >= num_classes)
      name, value = _first_where(bad, names, stored)
      checks = [_assert(tf.logical_not(tf.reduce_any(bad)), [
          f"Label out of range [0, {num_classes}) after subtracting label_offset={offset} "
          "(set label_offset/num_classes): shard", path, "image", name, "stored label", value])]
      if raw:
        lengths = tf.strings.length(encoded)
        wrong = tf.not_equal(lengths, RAW_BYTES)
        name, value = _first_where(wrong, names, lengths)
        checks.append(_assert(tf.logical_not(tf.reduce_any(wrong)), [
            f"A raw record is not {preprocessing.STORED_SIZE}x{preprocessing.STORED_SIZE}x3 "
            f"uint8 ({RAW_BYTES} bytes), as {dataset_info.FILENAME}'s encoding 'raw' needs: "
            "shard", path, "image", name, "bytes", value,
            ". Rebuild the shard with tfrecords.build --encoding=raw."]))
      with tf.control_dependencies(checks):
        label = tf.cast(label, tf.int32)
      if raw:   # checked here whole: nothing later needs to name a record
        return encoded, label
      return encoded, label, tf.strings.join([path, " image ", names])

    return batches.scan(tf.constant(0, tf.int64), count).map(check_and_parse)

  return read_shard


def _decoder(source: _Source, dct_method: str = ""):
  """(encoded image, label, where) -> (uint8 [256, 256, 3], label), for one record. Raw shards
  ((encoded, label)) decode a whole batch at once instead (`_decode_raw_batch`); this is their
  per-record form (cache=True)."""
  size = preprocessing.STORED_SIZE
  if source.encoding == "raw":
    @_no_autograph
    def decode_raw(encoded, label):   # the reader checked the size
      return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [size, size, 3]), label
    return decode_raw
  if source.image_size != size:
    @_no_autograph
    def decode_any(encoded, label, where):
      del where
      return preprocessing.decode_to_stored(encoded), label
    return decode_any

  @_no_autograph
  def decode(encoded, label, where):
    # The builder stored 256x256 JPEGs: decode only, and refuse any other size. The fewest
    # ops per image: each costs executor time beside the decode (BUILD_NOTES).
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method)
    shape = tf.shape(image)
    assertion = _assert(tf.reduce_all(tf.equal(shape, [size, size, 3])), [
        f"An image is not {size}x{size} in a dataset whose {dataset_info.FILENAME} says "
        f"image_size={size}: shard", where, "shape", shape])
    with tf.control_dependencies([assertion]):
      return tf.ensure_shape(image, [size, size, 3]), label

  return decode


@_no_autograph
def _decode_raw_batch(encoded, label):
  """A batch of raw records -> uint8 [B, 256, 256, 3]: one op for the batch (the reader
  checked every record's size, so they stack)."""
  size = preprocessing.STORED_SIZE
  return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [-1, size, size, 3]), label


def _crop_decoder(seed: int, dct_method: str = ""):
  """decode_crop=True: (index in the epoch, (encoded, label, where)) -> (uint8 [224, 224, 3],
  label, int32 [2] offsets). Only the random 224x224 window is decoded; its offsets, uniform
  in 0..32 per axis as augment's, are drawn from (seed, index), so a resumed epoch takes the
  same windows."""
  size, crop = preprocessing.STORED_SIZE, preprocessing.IMAGE_SIZE

  @_no_autograph
  def decode(index, record):
    encoded, label, where = record
    offsets = tf.random.stateless_uniform(
        [2], tf.stack([tf.constant(seed, tf.int64), index]), 0, preprocessing.MAX_OFFSET + 1,
        dtype=tf.int32, alg=preprocessing.RNG)
    shape = tf.io.extract_jpeg_shape(encoded)
    assertion = _assert(tf.reduce_all(tf.equal(shape, [size, size, 3])), [
        f"An image is not {size}x{size} in a dataset whose {dataset_info.FILENAME} says "
        f"image_size={size}: shard", where, "shape", shape])
    # Two rows and columns more than the window on each side where the image has them:
    # libjpeg's fancy (smooth) chroma upsampling replicates a cropped region's edge pixels
    # instead of reading their neighbours, which changed up to 7 levels of the window's
    # first and last columns (tested). So this is the window of the full decode, exactly.
    start = tf.maximum(offsets - 2, 0)
    extent = tf.minimum(offsets + crop + 2, size) - start
    with tf.control_dependencies([assertion]):
      image = tf.io.decode_and_crop_jpeg(encoded, tf.concat([start, extent], 0),
                                         channels=3, dct_method=dct_method)
    inner = offsets - start
    image = image[inner[0]:inner[0] + crop, inner[1]:inner[1] + crop]
    return tf.ensure_shape(image, [crop, crop, 3]), label, offsets

  return decode


# ---------------------------------------------------------------------------------------------
# The pipeline.

_CACHED = {}   # key -> decoded, cached dataset; kept so that epochs after the first reuse it.


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _seed(config, epoch, salt):
  """A 63-bit seed for (config.seed, epoch, salt): reproducible and distinct per epoch."""
  return int(np.random.SeedSequence([config.seed, epoch, salt]).generate_state(1, np.uint64)[0]
             >> np.uint64(1))


def synthetic_batch(batch_size: int, num_classes: int, seed=(0, 0)):
  """Random uint8 [B, 256, 256, 3] images and int32 [B] labels from stateless ops, for
  benchmarking the model without I/O. Call it inside the step to make the batch on the
  device; `create_split` with synthetic=True repeats one such batch."""
  seed = tf.convert_to_tensor(seed)
  image_seed, label_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2, alg=preprocessing.RNG))
  size = preprocessing.STORED_SIZE
  images = tf.random.stateless_uniform([batch_size, size, size, 3], image_seed, 0, 256,
                                       dtype=tf.int32, alg=preprocessing.RNG)
  labels = tf.random.stateless_uniform([batch_size], label_seed, 0, num_classes, dtype=tf.int32,
                                       alg=preprocessing.RNG)
  return tf.cast(images, tf.uint8), labels


def create_split(config: DataConfig, train: bool, batch_size: int, *,
                 input_context: Optional[tf.distribute.InputContext] = None, epoch: int = 0,
                 skip_batches: int = 0, split: Optional[str] = None) -> tf.data.Dataset:
  """One epoch of (uint8 [B, 256, 256, 3] images, int32 [B] labels). JPEG or raw shards give
  the same batches (raw: the JPEG's pixels, stored decoded by the builder).

  decode_crop=True (train only): (uint8 [B, 224, 224, 3] random windows, labels, int32 [B, 2]
  their (y, x) offsets), for preprocessing.augment_crops.

  train=True: this input pipeline's shards (input_context: disjoint files per pipeline) in an
  order drawn from (seed, epoch), interleaved, shuffled with a buffer of shuffle_buffer seeded
  by (seed, epoch), the first skip_batches * batch_size records skipped before any decoding
  (mid-epoch resume: with deterministic=True the rest are exactly the unskipped epoch's
  batches skip_batches, skip_batches + 1, ...), decoded, batched with drop_remainder.
  train=False: the validation split in file order, every example (the last batch may be
  smaller). split: another split read like validation (e.g. "test"); None: as `train` says.

  batch_size is what this pipeline yields: under a strategy, the per-replica batch
  (input_context.get_per_replica_batch_size(global_batch)).
  """
  _check_config(config)
  if batch_size < 1 or skip_batches < 0 or epoch < 0:
    raise ValueError(f"batch_size must be >= 1, epoch and skip_batches >= 0; received "
                     f"batch_size={batch_size}, epoch={epoch}, skip_batches={skip_batches}.")
  if split is not None and (train or split not in SPLITS):
    raise ValueError(f"split must be one of {SPLITS} with train=False; received {split!r}.")
  split = split or ("train" if train else "validation")
  if config.synthetic:
    return _synthetic_split(config, split, batch_size, epoch, skip_batches)

  source = _resolve(config, counts=False)
  files = list_shards(config.data_dir, split)
  if not files:
    raise FileNotFoundError(f"{config.data_dir} holds no {split} shards "
                            f"({split}-NNNNN-of-NNNNN). "
                            f"Build them with `{BUILD_COMMAND}`.")
  check_shards(config.data_dir, split, files, _shard_sizes(tuple(files)), source.info)
  service = config.data_service_address
  if input_context is not None and input_context.num_input_pipelines > 1 and not service:
    # Disjoint files per worker. (A tf.data service job is shared instead: the dispatcher hands
    # each file to one worker and each batch to one trainer.)
    pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) < pipelines:
      raise ValueError(f"{config.data_dir}: {len(files)} {split} shard(s) cannot be split "
                       f"across {pipelines} input pipelines; rebuild with at least {pipelines} "
                       "shards.")
    files = files[index::pipelines]
  sizes = list(_shard_sizes(tuple(files)))

  deterministic = config.deterministic or not train
  read_shard, decode = _reader(source), _decoder(source, config.dct_method)
  raw = source.encoding == "raw"
  crop = config.decode_crop and train
  if crop and (raw or source.image_size != preprocessing.STORED_SIZE):
    raise ValueError(f"DataConfig.decode_crop=True needs 256x256 JPEG shards; {config.data_dir}"
                     f" holds {'raw pixels' if raw else 'original-size images'} (decode_crop "
                     "only saves work in a JPEG decoder).")
  cached = config.cache
  if train and not cached:
    order = np.random.default_rng(_seed(config, epoch, 0)).permutation(len(files))
    files, sizes = [files[i] for i in order], [sizes[i] for i in order]
  ds = tf.data.Dataset.from_tensor_slices((files, np.array(sizes, np.int64)))

  if cached:
    key = (config, split, tuple(files))
    if key not in _CACHED:
      records = ds.flat_map(read_shard).unbatch()
      _CACHED[key] = records.map(decode, num_parallel_calls=config.num_parallel_calls,
                                 deterministic=True).cache()
    ds = _CACHED[key]
    if train:
      ds = ds.shuffle(config.shuffle_buffer, seed=_seed(config, epoch, 1),
                      reshuffle_each_iteration=False)
    ds = ds.skip(skip_batches * batch_size)
    ds = ds.batch(batch_size, drop_remainder=train)
  else:
    if train:
      # The readers yield batches of READ_BATCH records: the interleave handles 1/64 of the
      # elements (its per-element cost was a third of the reading's).
      cycle = min(len(files), CYCLE_LENGTH)
      readers = config.num_parallel_calls
      if readers == tf.data.AUTOTUNE:
        # One reader thread per core: AUTOTUNE ran up to `cycle` of them, whose hand-offs cost
        # ~6% of the CPU and a third of the wall-clock rate on 2 cores (BUILD_NOTES).
        readers = min(cycle, _cores())
      ds = ds.interleave(read_shard, cycle_length=cycle, block_length=1,
                         num_parallel_calls=readers, deterministic=deterministic).unbatch()
      ds = ds.shuffle(config.shuffle_buffer, seed=_seed(config, epoch, 1),
                      reshuffle_each_iteration=False)
    else:
      ds = ds.flat_map(read_shard).unbatch()
    if crop:
      ds = ds.enumerate()   # the position in the epoch seeds the crop: counted before the skip
    if skip_batches and not service:
      ds = ds.skip(skip_batches * batch_size)   # Before decoding: nothing skipped is decoded.
    if raw:
      # No decoding: the batch of raw records becomes pixels with one op.
      ds = ds.batch(batch_size, drop_remainder=train).map(
          _decode_raw_batch, num_parallel_calls=config.num_parallel_calls,
          deterministic=deterministic)
    else:
      if crop:
        decode = _crop_decoder(_seed(config, epoch, 2), config.dct_method)
      ds = ds.map(decode, num_parallel_calls=config.num_parallel_calls,
                  deterministic=deterministic)
      ds = ds.batch(batch_size, drop_remainder=train)

  options = tf.data.Options()
  options.deterministic = deterministic
  # The files are sharded above; a strategy must not shard the batches again.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  if config.private_threadpool_size:
    options.threading.private_threadpool_size = config.private_threadpool_size
  ds = ds.with_options(options)

  if service:
    ds = _distribute(ds, config, split, epoch, input_context)
    if skip_batches:
      logging.info("tf.data service: skipping %d batches of a dynamically sharded epoch (its "
                   "order is not reproducible; the workers decode what is skipped).",
                   skip_batches)
      ds = ds.skip(skip_batches)
  return ds.prefetch(tf.data.AUTOTUNE)


def _distribute(ds, config, split, epoch, input_context):
  """Runs everything above on tf.data service workers.

  DYNAMIC sharding: the dispatcher hands out the shard files one at a time, so each example is
  read once per epoch however many workers there are. Several trainers (input_context with more
  than one pipeline) share one named job and each receives different batches; a single trainer
  gets a job of its own. Batches travel uncompressed: decoded JPEGs hardly compress, and the
  trainer's CPU is the one this is meant to spare.
  """
  address = config.data_service_address
  if not address.startswith("grpc://"):
    address = "grpc://" + address
  shared = input_context is not None and input_context.num_input_pipelines > 1
  job_name = f"keras_alexnet-{split}-seed{config.seed}-epoch{epoch}" if shared else None
  return ds.apply(tf.data.experimental.service.distribute(
      processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
      service=address, job_name=job_name, compression=None))


def _synthetic_split(config, split, batch_size, epoch, skip_batches):
  num_classes = config.num_classes or IMAGENET_NUM_CLASSES
  steps = IMAGENET_NUM_EXAMPLES[split] // batch_size - skip_batches
  seed = tf.constant([config.seed, epoch], tf.int64)
  batch = synthetic_batch(batch_size, num_classes, seed)
  return tf.data.Dataset.from_tensors(batch).repeat(max(steps, 0))
