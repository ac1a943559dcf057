"""The input pipeline: TFRecord shards -> uint8 [B, 256, 256, 3] batches and int32 labels.

The CPU does only what must happen on the CPU, reading and decoding; cropping, mirroring,
lighting and the mean (keras_alexnet.preprocessing.augment) run on the accelerator inside the
training step. One function, `create_split`, one chain in a fixed order:

  files -> interleave (read) -> count bytes -> parse -> shuffle -> (skip) -> decode -> batch
  -> prefetch

Reading, counting and parsing go by READ_BATCH records of a shard, rather than per record
with the decoding: per record, a separate parse costs more than the rest of the reading. The
functions sit outside the interleave, which would instantiate them again for every shard
(BUILD_NOTES).

What a data_dir holds (format, counts, classes) and DataConfig are keras_alexnet.data_sources';
the stored image's size and decoder are keras_alexnet.decoding's. Imports those, dataset_info,
and features, never preprocessing or the model (later stages).
"""

import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from keras_alexnet import data_sources
from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import errors
from keras_alexnet import features

# Files read at once by the interleave; more than the cores so that reads overlap decoding.
CYCLE_LENGTH = 16
# A TFRecord frames each record with an 8-byte length, its 4-byte CRC and the data's 4-byte CRC.
RECORD_OVERHEAD = 16
# Records per step of the shard reader's integrity bookkeeping, parsing and label checks.
READ_BATCH = 64


# ---------------------------------------------------------------------------------------------
# Records -> (image, label).


# The pipeline's functions have no Python control flow on tensors: AutoGraph would only cost
# tracing time (and re-reads the source, which breaks if the file changed since import).
_no_autograph = tf.autograph.experimental.do_not_convert


def _assert(condition, data):
  """An Assert op that fails with `data` when `condition` is false. tf.debugging.Assert wraps
  string data in a tf.cond: a function call per image, measurably slower (BUILD_NOTES)."""
  return tf.raw_ops.Assert(condition=condition, data=[tf.convert_to_tensor(x) for x in data],
                           summarize=10)


def _first_where(mask, *values):
  """values[i][j] at the first j where mask[j] (or at 0 if none; a padding value when the
  batch is empty): what an error message shows of a batch."""
  first = tf.argmax(tf.concat([tf.cast(mask, tf.int32), [0]], 0))
  return [tf.gather(tf.concat([v, tf.zeros([1], v.dtype)], 0), first) for v in values]


def _reader(source: data_sources.Source, files, sizes):
  """-> (read_shard, check) for these shard paths and their file sizes.

  read_shard: (index in `files`, path) -> that shard's records in READ_BATCH-record batches,
  each with the index, then an empty batch: the shard's end. It holds no function of its own
  (a function in it would be instantiated again for every shard: BUILD_NOTES).
  check(batches, num_parallel_calls, deterministic): those batches, from any number of shards
  in any order -> batches of (encoded image, int32 label, where), failing with the shard's
  name on corruption and with the image's on a bad label: a scan over all shards counts the
  bytes (serial, so nothing else), a parallel map parses and checks. Each function is
  instantiated once per epoch, not once per shard. `where` ("<shard path> image <file
  name>") is what a later per-image check names; raw shards, checked whole here, have none.

  TFRecordDataset reports a bad CRC or a truncated file as "corrupted record at N", without
  the file. So the reader's error is swallowed (ignore_errors: the reader then stops at that
  record) and the bytes read of each shard are counted and checked against its file size at
  the shard's end: a shard that was not read to its end fails, naming itself, right after
  the bad record. Everything per record that can be vectorized runs per READ_BATCH records:
  the bookkeeping, the parse, the label check and, for raw shards, the size check. Per
  record they cost more than the rest of the reading (BUILD_NOTES).
  """
  if source.format == "tfds":
    encoded_key, label_key, name_key = data_sources.TFDS_KEYS
  else:
    encoded_key, label_key, name_key = features.ENCODED, features.LABEL, features.FILENAME
  spec = {encoded_key: tf.io.FixedLenFeature([], tf.string),
          label_key: tf.io.FixedLenFeature([], tf.int64),
          name_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
  raw = source.encoding == "raw"
  offset, num_classes = source.label_offset, source.num_classes
  paths, file_sizes = tf.constant(list(files), tf.string), tf.constant(list(sizes), tf.int64)

  @_no_autograph
  def read_shard(index, path):
    batches = tf.data.TFRecordDataset(path).ignore_errors(log_warning=True).batch(READ_BATCH)
    batches = batches.concatenate(tf.data.Dataset.from_tensors(tf.constant([], tf.string)))
    return tf.data.Dataset.zip((tf.data.Dataset.from_tensors(index).repeat(), batches))

  @_no_autograph
  def count(read, batch):
    # Serial, so only the bookkeeping: the parse runs in a parallel map after it.
    index, records = batch
    read = tf.tensor_scatter_nd_add(read, [[index]], [tf.reduce_sum(
        tf.cast(tf.strings.length(records), tf.int64) + RECORD_OVERHEAD)])
    complete = tf.logical_or(tf.size(records) > 0, tf.equal(read[index], file_sizes[index]))
    assertion = _assert(complete, [
        "Corrupted or truncated TFRecord shard (bad CRC or length):", paths[index], "read",
        read[index], "of", file_sizes[index], "bytes. Rebuild or re-copy this shard."])
    with tf.control_dependencies([assertion]):
      return read, (index, tf.identity(records))

  @_no_autograph
  def parse_and_check(index, records):
    path = paths[index]
    examples = tf.io.parse_example(records, spec)
    encoded, names, stored = examples[encoded_key], examples[name_key], examples[label_key]
    label = stored - offset
    # Conditions and messages from a few ops per batch (a boolean_mask of the names cost
    # more per record: BUILD_NOTES). The message names the first offending record.
    bad = tf.logical_or(label < 0, label >= num_classes)
    name, value = _first_where(bad, names, stored)
    checks = [_assert(tf.logical_not(tf.reduce_any(bad)), [
        f"Label out of range [0, {num_classes}) after subtracting label_offset={offset} "
        "(set label_offset/num_classes): shard", path, "image", name, "stored label", value])]
    if raw:
      lengths = tf.strings.length(encoded)
      wrong = tf.not_equal(lengths, decoding.RAW_BYTES)
      name, value = _first_where(wrong, names, lengths)
      checks.append(_assert(tf.logical_not(tf.reduce_any(wrong)), [
          f"A raw record is not {decoding.STORED_SIZE}x{decoding.STORED_SIZE}x3 "
          f"uint8 ({decoding.RAW_BYTES} bytes), as {dataset_info.FILENAME}'s encoding 'raw' "
          "needs: shard", path, "image", name, "bytes", value,
          ". Rebuild the shard with tfrecords.build --encoding=raw."]))
    with tf.control_dependencies(checks):
      label = tf.cast(label, tf.int32)
    if raw:   # checked here whole: nothing later needs to name a record
      return encoded, label
    return encoded, label, tf.strings.join([path, " image ", names])

  def check(batches, num_parallel_calls, deterministic):
    batches = batches.scan(tf.zeros([len(files)], tf.int64), count)
    return batches.map(parse_and_check, num_parallel_calls=num_parallel_calls,
                       deterministic=deterministic)

  return read_shard, check


def _decoder(source: data_sources.Source, dct_method: str = ""):
  """(encoded image, label, where) -> (uint8 [256, 256, 3], label), for one record. Raw shards
  ((encoded, label)) decode a whole batch at once instead (`_decode_raw_batch`); this is their
  per-record form (cache=True)."""
  size = decoding.STORED_SIZE
  if source.encoding == "raw":
    @_no_autograph
    def decode_raw(encoded, label):   # the reader checked the size
      return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [size, size, 3]), label
    return decode_raw
  if source.image_size != size:
    @_no_autograph
    def decode_any(encoded, label, where):
      del where
      return decoding.decode_to_stored(encoded), label
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
  size = decoding.STORED_SIZE
  return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [-1, size, size, 3]), label


def _crop_decoder(seed: int, dct_method: str = ""):
  """decode_crop=True: (index in the epoch, (encoded, label, where)) -> (uint8 [224, 224, 3],
  label, int32 [2] offsets). Only the random 224x224 window is decoded; its offsets, uniform
  in 0..32 per axis as augment's, are drawn from (seed, index), so a resumed epoch takes the
  same windows."""
  size, crop = decoding.STORED_SIZE, decoding.IMAGE_SIZE

  @_no_autograph
  def decode(index, record):
    encoded, label, where = record
    offsets = tf.random.stateless_uniform(
        [2], tf.stack([tf.constant(seed, tf.int64), index]), 0, decoding.MAX_OFFSET + 1,
        dtype=tf.int32, alg=decoding.RNG)
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
      tf.random.experimental.stateless_split(seed, 2, alg=decoding.RNG))
  size = decoding.STORED_SIZE
  images = tf.random.stateless_uniform([batch_size, size, size, 3], image_seed, 0, 256,
                                       dtype=tf.int32, alg=decoding.RNG)
  labels = tf.random.stateless_uniform([batch_size], label_seed, 0, num_classes, dtype=tf.int32,
                                       alg=decoding.RNG)
  return tf.cast(images, tf.uint8), labels


def create_split(config: data_sources.DataConfig, train: bool, batch_size: int, *,
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
  data_sources.check_config(config)
  if batch_size < 1:
    raise errors.invalid("batch_size", batch_size, ">= 1")
  if skip_batches < 0 or epoch < 0:
    raise ValueError(f"epoch and skip_batches must be >= 0; received epoch={epoch}, "
                     f"skip_batches={skip_batches}.")
  if split is not None and (train or split not in data_sources.SPLITS):
    raise errors.invalid("split", split, f"one of {data_sources.SPLITS} with train=False")
  split = split or ("train" if train else "validation")
  if config.synthetic:
    return _synthetic_split(config, split, batch_size, epoch, skip_batches)
  source = data_sources.resolve(config, counts=False)
  raw = source.encoding == "raw"
  crop = config.decode_crop and train
  if crop and (raw or source.image_size != decoding.STORED_SIZE):
    raise ValueError(f"DataConfig.decode_crop=True needs 256x256 JPEG shards; {config.data_dir}"
                     f" holds {'raw pixels' if raw else 'original-size images'} (decode_crop "
                     "only saves work in a JPEG decoder).")
  service = config.data_service_address
  deterministic = config.deterministic or not train
  decode = (_crop_decoder(_seed(config, epoch, 2), config.dct_method) if crop
            else _decoder(source, config.dct_method))

  # Files: this pipeline's shards, in an order drawn from (seed, epoch) for training.
  files, sizes = _shards(config, split, source, input_context)
  if train and not config.cache:
    order = np.random.default_rng(_seed(config, epoch, 0)).permutation(len(files))
    files, sizes = [files[i] for i in order], [sizes[i] for i in order]
  read_shard, check = _reader(source, files, sizes)
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(files), dtype=np.int64), files))
  # Interleave: read, check and parse (cache=True: the decoded images, read and decoded once).
  if config.cache:
    ds = _read_and_decode_once(ds, (config, split, tuple(files)), read_shard, check, decode,
                               config.num_parallel_calls)
  elif train:
    ds = check(_interleave(ds, read_shard, len(files), config.num_parallel_calls,
                           deterministic), config.num_parallel_calls, deterministic).unbatch()
  else:
    ds = check(ds.flat_map(read_shard), config.num_parallel_calls, True).unbatch()
  # Shuffle.
  if train:
    ds = ds.shuffle(config.shuffle_buffer, seed=_seed(config, epoch, 1),
                    reshuffle_each_iteration=False)
  if crop:
    ds = ds.enumerate()   # the position in the epoch seeds the crop: counted before the skip
  # Skip (mid-epoch resume), before decoding: nothing skipped is decoded.
  if skip_batches and not service:
    ds = ds.skip(skip_batches * batch_size)
  # Decode and batch.
  if config.cache:
    ds = ds.batch(batch_size, drop_remainder=train)
  elif raw:
    # No decoding: the batch of raw records becomes pixels with one op.
    ds = ds.batch(batch_size, drop_remainder=train).map(
        _decode_raw_batch, num_parallel_calls=config.num_parallel_calls,
        deterministic=deterministic)
  else:
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


def _shards(config, split, source, input_context):
  """The shard paths of `split` this input pipeline reads (disjoint files per pipeline), and
  their byte sizes, checked against dataset_info.json."""
  source_files = data_sources.list_shards(config.data_dir, split)
  if not source_files:
    raise FileNotFoundError(f"{config.data_dir} holds no {split} shards "
                            f"({split}-NNNNN-of-NNNNN). "
                            f"Build them with `{data_sources.BUILD_COMMAND}`.")
  data_sources.check_shards(config.data_dir, split, source_files,
                            data_sources.shard_sizes(tuple(source_files)),
                            source.info)
  files = source_files
  if (input_context is not None and input_context.num_input_pipelines > 1
      and not config.data_service_address):
    # Disjoint files per worker. (A tf.data service job is shared instead: the dispatcher hands
    # each file to one worker and each batch to one trainer.)
    pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) < pipelines:
      raise ValueError(f"{config.data_dir}: {len(files)} {split} shard(s) cannot be split "
                       f"across {pipelines} input pipelines; rebuild with at least {pipelines} "
                       "shards.")
    files = files[index::pipelines]
  return files, list(data_sources.shard_sizes(tuple(files)))


def _interleave(ds, read_shard, num_files, num_parallel_calls, deterministic):
  """Records of several shards at once, from READ_BATCH-record batches of each reader: the
  interleave handles 1/READ_BATCH of the elements (its per-element cost is a sizeable part
  of the reading's: BUILD_NOTES)."""
  cycle = min(num_files, CYCLE_LENGTH)
  readers = num_parallel_calls
  if readers == tf.data.AUTOTUNE:
    # One reader thread per core: AUTOTUNE ran up to `cycle` of them, whose hand-offs cost
    # CPU time and wall-clock rate on 2 cores (figures in BUILD_NOTES).
    readers = min(cycle, _cores())
  return ds.interleave(read_shard, cycle_length=cycle, block_length=1,
                       num_parallel_calls=readers, deterministic=deterministic)


def _read_and_decode_once(ds, key, read_shard, check, decode, num_parallel_calls):
  """cache=True: the decoded images of the files in file order, kept in memory by the first
  epoch and reused by every later epoch's dataset in this process (memo keyed by `key`)."""
  if key not in _CACHED:
    records = check(ds.flat_map(read_shard), num_parallel_calls, True).unbatch()
    _CACHED[key] = records.map(decode, num_parallel_calls=num_parallel_calls,
                               deterministic=True).cache()
  return _CACHED[key]


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
  num_classes = config.num_classes or data_sources.IMAGENET_NUM_CLASSES
  steps = data_sources.IMAGENET_NUM_EXAMPLES[split] // batch_size - skip_batches
  seed = tf.constant([config.seed, epoch], tf.int64)
  batch = synthetic_batch(batch_size, num_classes, seed)
  return tf.data.Dataset.from_tensors(batch).repeat(max(steps, 0))
