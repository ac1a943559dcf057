r"""Builds TFRecord shards + dataset_info.json from ImageNet as downloaded, or any class folders.

  python -m tfrecords.build --input=PATH --output_dir=DIR [--num_workers=N] [--verify]
  python -m tfrecords.build --output_dir=DIR --verify          # only check a finished build

One tf.train.Example per image, with the Model Garden's keys (keras_alexnet.features), labels
0-based. Images are, as in the paper (Section 2), resized so the shorter side is 256 and
centre-cropped to 256x256, then stored as JPEG; training-set statistics (mean image, mean RGB,
RGB covariance and its eigen-pairs) are computed on the way. Shard counts default to "auto"
(auto_num_shards): the Model Garden's for ImageNet, else sized by bytes.

Robustness: each shard is written under a temporary name and renamed when complete, together
with its statistics (in DIR/.build/), so a killed build resumes where it stopped; the output is
byte-identical whatever the number of worker processes or hosts (shards are the unit of work,
their contents depend only on the input, the flags and the seed).
"""

import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from typing import Optional, Union

from absl import logging
import numpy as np
import PIL
from PIL import Image

from keras_alexnet import cli
from keras_alexnet import dataset_info
from keras_alexnet import features
from keras_alexnet import files
from . import image
from . import releases
from . import safety
from . import sources
from . import statistics
from .sources import InputError

BUILDER = "tfrecords.build/1"   # bump when the bytes written for the same input change
# --train_shards / --validation_shards: "auto" (see auto_num_shards) or a number.
AUTO = "auto"
DEFAULT_TRAIN_SHARDS = AUTO
DEFAULT_VALIDATION_SHARDS = AUTO
MAX_SHARDS = 99_999             # five digits in train-00000-of-NNNNN
# The Model Garden's shard counts for ILSVRC-2012 (~1250 training and ~390 validation images
# per shard), kept for an ImageNet-sized split so its files are named as every ImageNet
# reader (the Model Garden's, TFDS's, this one) expects: train-00000-of-01024.
IMAGENET_SHARDS = {"train": 1024, "validation": 128}
# ILSVRC-2012's split sizes. A split within 10% of its size is "ImageNet-sized": that covers
# the release with images removed or added (e.g. the 1,762 blacklisted validation images, or
# a few thousand duplicates), not a subset (ImageNet-100) nor a much larger set (ImageNet-21k),
# which get byte-sized shards.
IMAGENET_IMAGES = {"train": 1_281_167, "validation": 50_000}
IMAGENET_TOLERANCE = 0.10
# Otherwise shards of about this size: TFDS's performance guide recommends 100-200 MB per
# shard (tensorflow.org/datasets/performances), big enough to read at full speed, small enough
# to spread over readers and hosts.
TARGET_SHARD_BYTES = 128 << 20
# Estimated stored bytes per pixel of a resized image: a JPEG of a photograph at quality 95
# takes about 0.5-1 byte per pixel; an estimate, only the shard count's order matters.
BYTES_PER_STORED_PIXEL = 0.75
DEFAULT_IMAGE_SIZE = 256        # Section 2
DEFAULT_JPEG_QUALITY = 95
STATE_DIR = ".build"            # per-shard statistics of an unfinished build
STATE_FILENAME = "build.json"
LABELS_FILENAME = "labels.txt"
SKIPPED_FILENAME = "skipped.txt"
SHARD_PATTERN = re.compile(r"(train|validation|test)-\d{5}-of-\d{5}")
TEMP_PREFIX = ".tmp-"
_PROGRESS_EVERY = 16            # images between updates of the shared progress counter
# TensorFlow is imported only where records are written or read (the worker functions): the
# command answers bad flags or input in a second instead of after TF's import. The forkserver
# imports it once for all workers.
# The package first: it imports TF quietly (keras_alexnet/_startup.py). This module by the
# name it was imported under (tfrecords.build in a checkout, keras_alexnet.tfrecords.build
# when installed), which is the name its pickled functions carry.
_WORKER_PRELOAD = ["keras_alexnet", __name__]


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """What to build. The fields that change the bytes written are recorded in dataset_info."""
  input: Optional[str]
  output_dir: str
  layout: str = "auto"                   # one of sources.LAYOUTS
  image_size: Optional[int] = DEFAULT_IMAGE_SIZE   # None: keep the original pixels
  jpeg_quality: int = DEFAULT_JPEG_QUALITY
  train_shards: Union[int, str] = DEFAULT_TRAIN_SHARDS     # a number, or "auto"
  validation_shards: Union[int, str] = DEFAULT_VALIDATION_SHARDS
  seed: int = 0
  classes_file: Optional[str] = None
  validation_labels_file: Optional[str] = None
  num_workers: int = 0                   # 0: one per core
  host_index: int = 0
  num_hosts: int = 1
  overwrite: bool = False
  progress: bool = True
  # Other releases (tfrecords/releases.py): ILSVRC-2010's test split and devkit files, and the
  # seeded per-class hold-out for datasets without a validation split (Fall 2011).
  test_shards: Optional[int] = None      # None: as many as validation_shards
  validation_fraction: Optional[float] = None
  test_labels_file: Optional[str] = None
  meta_file: Optional[str] = None
  devkit_dir: Optional[str] = None       # ILSVRC-2010's devkit, if not under --input
  encoding: str = "jpeg"                 # "jpeg" | "raw": what image/encoded holds (ENCODINGS)
  max_image_pixels: int = image.MAX_IMAGE_PIXELS   # images with more are skipped unread
  allow_empty_classes: bool = False      # a class folder without images: warn, not fail
  follow_outside_links: bool = False     # follow symlinks that leave --input


# --encoding: "jpeg" stores each image as a JPEG; "raw" its uint8 pixels, size x size x 3
# row-major RGB (196,608 bytes at 256: decode-free reading, ~8x the bytes of q95 JPEGs).
ENCODINGS = ("jpeg", "raw")


@dataclasses.dataclass(frozen=True)
class _ShardTask:
  split: str
  index: int
  num_shards: int
  items: tuple
  output_dir: str
  image_size: Optional[int]
  jpeg_quality: int
  classes: tuple
  encoding: str = "jpeg"
  max_image_pixels: int = image.MAX_IMAGE_PIXELS


def _check_config(config: BuildConfig) -> None:
  problems = []
  if not 1 <= config.jpeg_quality <= 100:
    problems.append(f"--jpeg_quality={config.jpeg_quality} must be in 1..100")
  if config.image_size is not None and config.image_size < 1:
    problems.append(f"--resize={config.image_size} must be a positive size or 'none'")
  if config.encoding not in ENCODINGS:
    problems.append(f"--encoding={config.encoding} must be one of {', '.join(ENCODINGS)}")
  elif config.encoding == "raw" and config.image_size is None:
    problems.append("--encoding=raw needs --resize=N (e.g. 256): raw pixels are stored "
                    "without a shape, so every image must have the same size; --resize=none "
                    "keeps original sizes, which only --encoding=jpeg can store")
  for name in ("train_shards", "validation_shards", "test_shards"):
    value = getattr(config, name)
    if name == "test_shards" and value is None:
      continue   # as --validation_shards
    if value != AUTO and not (isinstance(value, int) and 1 <= value <= MAX_SHARDS):
      problems.append(f"--{name}={value} must be 'auto' or a number in 1..{MAX_SHARDS}")
  try:
    releases.check_fraction(config.validation_fraction)
  except InputError as e:
    problems.append(str(e))
  if config.max_image_pixels < 1:
    problems.append(f"--max_image_pixels={config.max_image_pixels} must be >= 1")
  if config.num_workers < 0:
    problems.append(f"--num_workers={config.num_workers} must be >= 0 (0: one per core)")
  if not 0 <= config.host_index < config.num_hosts:
    problems.append(f"--host_index={config.host_index} must be in 0..--num_hosts-1 "
                    f"(--num_hosts={config.num_hosts})")
  for name in ("classes_file", "validation_labels_file", "test_labels_file", "meta_file"):
    path = getattr(config, name)
    if path and not os.path.isfile(path):
      problems.append(f"--{name}={path} does not exist")
  if config.devkit_dir and not os.path.isdir(config.devkit_dir):
    problems.append(f"--devkit_dir={config.devkit_dir} is not a folder")
  if os.path.exists(config.output_dir) and not os.path.isdir(config.output_dir):
    problems.append(f"--output_dir={config.output_dir} is a file")
  if problems:
    raise InputError("; ".join(problems))


def num_workers(requested: int) -> int:
  return requested or len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------------
# Planning: which images go to which shard.


def _imagenet_sized(split: str, num_images: int) -> bool:
  # ILSVRC-2012 has no test split with labels: a test split (ILSVRC-2010's) is sized by bytes.
  return (split in IMAGENET_IMAGES and
          abs(num_images - IMAGENET_IMAGES[split]) <= IMAGENET_TOLERANCE * IMAGENET_IMAGES[split])


def auto_num_shards(split: str, num_images: int, num_bytes: Optional[int],
                    writers: int) -> tuple[int, str]:
  """(shards, why) for --{split}_shards=auto.

  An ImageNet-sized split (within IMAGENET_TOLERANCE of ILSVRC-2012's count) gets the Model
  Garden's count; any other split one shard per TARGET_SHARD_BYTES of its estimated stored
  bytes, at least one per writer (worker processes x hosts, so every writer has a shard) and
  never more shards than images. `num_bytes` may be None for an ImageNet-sized split.
  """
  if _imagenet_sized(split, num_images):
    return IMAGENET_SHARDS[split], (
        f"{num_images:,} images is ImageNet-sized (ILSVRC-2012's {IMAGENET_IMAGES[split]:,} "
        f"+-{IMAGENET_TOLERANCE:.0%}): the Model Garden's {IMAGENET_SHARDS[split]} shards")
  by_bytes = max(1, math.ceil(num_bytes / TARGET_SHARD_BYTES))
  why = (f"{num_images:,} images of ~{num_bytes / 1e6:,.1f} MB (estimated): {by_bytes} "
         f"shard(s) of at most {TARGET_SHARD_BYTES >> 20} MiB")
  shards = by_bytes
  if shards < writers:
    shards = min(writers, num_images)
    why += f", raised to {shards} for the {writers} writers (workers x hosts)"
    if shards < writers:
      why += " as far as the images allow"
  if shards > min(num_images, MAX_SHARDS):
    shards = min(num_images, MAX_SHARDS)
    why += f", capped at {shards}"
  return shards, why


def _estimated_bytes(items, image_size: Optional[int]) -> int:
  """What the split's images will take in the shards, from their sizes on disk: the original
  bytes (--resize=none), or at most a resized JPEG's (BYTES_PER_STORED_PIXEL)."""
  cap = (BYTES_PER_STORED_PIXEL * image_size * image_size if image_size else float("inf"))
  total = 0
  for item in items:
    size = item.size if item.size >= 0 else os.path.getsize(item.path)
    total += min(size, cap)
  return int(total)


def _shard_counts(source: sources.Source, config: BuildConfig, writers: int) -> dict:
  """{split: {"flag": the flag's value, "num_shards": N, "why": ...}} for the splits with
  images. Depends only on the input, the flags and `writers`: the same on a resume."""
  chosen = {}
  for split in sources.SPLITS:
    if split not in source.splits:
      continue
    items = source.splits[split]
    flag = {"train": "train_shards", "validation": "validation_shards",
            "test": "validation_shards" if config.test_shards is None else "test_shards"}[split]
    value = getattr(config, flag)
    if value != AUTO:
      if items:
        chosen[split] = {"flag": value, "num_shards": value, "why": f"--{flag}={value}"}
      continue
    if not items:
      rejected = source.rejected.get(split, [])
      raise InputError(
          f"--{flag}=auto: the {split} split of --input={config.input} holds no images"
          + (f" ({len(rejected)} files are not images, e.g. {rejected[0][0]!r})" if rejected
             else "") + "; auto sizes the shards from the images, so it needs at least one "
          f"(allowed: {', '.join(sources.IMAGE_EXTENSIONS)} files in class folders). Add "
          f"images, or remove the empty {split} folder to build without that split.")
    # No stat of 1.3 M files when the count does not depend on their bytes.
    if _imagenet_sized(split, len(items)):
      num_bytes = None
    elif config.encoding == "raw":   # exactly size x size x 3 bytes a record
      num_bytes = len(items) * 3 * config.image_size * config.image_size
    else:
      num_bytes = _estimated_bytes(items, config.image_size)
    num_shards, why = auto_num_shards(split, len(items), num_bytes, writers)
    chosen[split] = {"flag": AUTO, "num_shards": num_shards, "why": "auto: " + why}
  return chosen


def _shards(source: sources.Source, config: BuildConfig, counts: dict) -> list[_ShardTask]:
  """Every shard of the dataset, train first; images in a seeded shuffled order, balanced."""
  tasks = []
  for split in sources.SPLITS:
    items = source.splits.get(split)
    if not items:
      continue
    num_shards = counts[split]["num_shards"]
    if num_shards > len(items):
      flag = f"{split}_shards"
      raise InputError(f"--{flag}={num_shards} is more than the {len(items)} {split} images; "
                       f"pass --{flag}=N with N <= {len(items)}, or --{flag}=auto")
    # random.Random with a str seed hashes it with SHA-512: the same order on every platform.
    order = list(items)
    random.Random(f"{config.seed}/{split}").shuffle(order)
    for index in range(num_shards):
      chunk = order[index * len(order) // num_shards:(index + 1) * len(order) // num_shards]
      tasks.append(_ShardTask(split, index, num_shards, tuple(chunk), config.output_dir,
                              config.image_size, config.jpeg_quality, source.classes,
                              config.encoding, config.max_image_pixels))
  return tasks


def _keep_auto_counts(counts: dict, record: dict, previous) -> None:
  """Adopts the auto shard counts of the build in output_dir (finished or not) when it is
  this build but for them: --num_workers=0 means one writer per core, and a resume on
  another machine (or a host with other cores) must not refuse, nor rebuild, the same data."""
  if not isinstance(previous, dict) or not isinstance(previous.get("num_shards"), dict):
    return
  old = previous["num_shards"]
  if ({k: v for k, v in previous.items() if k != "num_shards"}
      != {k: v for k, v in record.items() if k != "num_shards"} or set(old) != set(counts)
      or old == record["num_shards"]):
    return
  if any(counts[s]["flag"] != AUTO for s in counts if old[s] != counts[s]["num_shards"]):
    return
  for split, meta in counts.items():
    if old[split] != meta["num_shards"]:
      meta["why"] += (f"; {old[split]} kept from the build already in the output folder "
                      "(resumed with other workers)")
      meta["num_shards"] = old[split]
  record["num_shards"] = dict(old)


def _build_record(source: sources.Source, config: BuildConfig, counts: dict) -> dict:
  """What determines the bytes written: a build with a different record may not mix in."""
  listing = hashlib.sha256()
  for split in sorted(source.splits):
    for item in source.splits[split]:
      listing.update(f"{split}\t{item.filename}\t{item.label}\n".encode())
  listing.update(json.dumps(source.classes).encode())
  return {
      "builder": BUILDER,
      "pillow": PIL.__version__,   # its libjpeg writes the bytes
      "input": os.path.abspath(config.input),
      "layout": source.layout,
      "listing_sha256": listing.hexdigest(),
      "resize": config.image_size if config.image_size else "none",
      "jpeg_quality": config.jpeg_quality,
      "seed": config.seed,
      "num_shards": {s: meta["num_shards"] for s, meta in counts.items()},
      **({"encoding": config.encoding} if config.encoding != "jpeg" else {}),
      "classes_file": config.classes_file and os.path.abspath(config.classes_file),
      "validation_labels_file": (config.validation_labels_file
                                 and os.path.abspath(config.validation_labels_file)),
      # Only when set, so that the record of a build without them is what it always was.
      **({"validation_fraction": config.validation_fraction}
         if config.validation_fraction is not None else {}),
      **{name: os.path.abspath(getattr(config, name)) for name in ("test_labels_file",
                                                                  "meta_file", "devkit_dir")
         if getattr(config, name)},
  }


# ---------------------------------------------------------------------------------------------
# The output folder: refuse to mix builds, resume our own.


def _our_files(output_dir: str) -> list[str]:
  """The files in output_dir that a build writes (and --overwrite may delete)."""
  if not os.path.isdir(output_dir):
    return []
  fixed = {dataset_info.FILENAME, dataset_info.MEAN_IMAGE_FILENAME, LABELS_FILENAME,
           SKIPPED_FILENAME, STATE_DIR}
  names = []
  for name in os.listdir(output_dir):
    bare = name[len(TEMP_PREFIX):].split(".", 1)[0] if name.startswith(TEMP_PREFIX) else name
    if name in fixed or SHARD_PATTERN.fullmatch(bare):
      names.append(name)
  return sorted(names)


def _differences(old: dict, new: dict) -> str:
  keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  return "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys)


def _previous_build(out: str) -> tuple[Optional[dict], Optional[dict]]:
  """(dataset_info of a finished build or None, the record of the build in `out` or None)."""
  try:
    info = dataset_info.read(out)
  except ValueError as e:
    info = {"build": f"unreadable ({e})"}
  state_path = os.path.join(out, STATE_DIR, STATE_FILENAME)
  state = None
  if os.path.exists(state_path):
    try:
      with open(state_path) as f:
        state = json.load(f)
    except (OSError, ValueError):
      state = {"unreadable": state_path}
  return info, (info.get("build") if info else state)


def _prepare_output(config: BuildConfig, record: dict,
                    planned: list[str]) -> Optional[dict]:
  """Checks output_dir against this build; returns its dataset_info if already complete.

  Raises InputError (nothing touched) when it holds another build and --overwrite is not set,
  or when a name in `planned` (what this build writes) is taken by something no build wrote.
  """
  out = config.output_dir
  info, previous = _previous_build(out)
  existing = _our_files(out)
  if previous == record:
    if info is None:
      # An unfinished build of the same dataset: resume it. Its shards are those with state.
      safety.check_free_names(out, planned, set(_state_owned(out)) | _FIXED_NAMES)
      return None
    missing = [n for n in _expected_shards(info) if not os.path.exists(os.path.join(out, n))]
    if missing:
      raise InputError(f"{out}/{dataset_info.FILENAME} records a finished build but "
                       f"{len(missing)} shards are missing (e.g. {missing[0]}); rebuild with "
                       "--overwrite")
    return info
  if existing and previous is None:
    safety.check_free_names(out, planned, set())
    raise InputError(
        f"--output_dir={out} holds {len(existing)} file(s) named like dataset files (e.g. "
        f"{existing[0]}) that no build recorded writing (there is no {dataset_info.FILENAME} "
        f"or {STATE_DIR}/ state). Nothing was changed, and --overwrite does not delete them (it "
        "removes only the files a build listed). Move them away or choose another "
        "--output_dir.")
  if existing and not config.overwrite:
    if not isinstance(previous, dict):
      why = f"its {dataset_info.FILENAME} is {previous}"
    else:
      why = "they were built from a different input or flags: " + _differences(previous, record)
    raise InputError(f"--output_dir={out} already holds a dataset and {why}. Nothing was "
                     "changed. Choose another --output_dir, or pass --overwrite to replace it "
                     "(only the builder's own files are deleted).")
  if config.overwrite:
    _remove_previous(out, info)
  safety.check_free_names(out, planned, set())
  left = [n for n in _our_files(out) if SHARD_PATTERN.fullmatch(n)]
  if left:
    logging.warning("%s keeps %d file(s) named like shards that no build recorded (e.g. %s); "
                    "they were not deleted, but the input pipeline will refuse the folder as "
                    "mixed until they are moved away.", out, len(left), left[0])
  return None


# What a build writes besides its shards.
_FIXED_NAMES = {dataset_info.FILENAME, dataset_info.MEAN_IMAGE_FILENAME, LABELS_FILENAME,
                SKIPPED_FILENAME}


def _recorded_files(info: Optional[dict]) -> list[str]:
  """The files a finished build wrote, by its dataset_info.json: its "files" list, or (builds
  from before it was kept) its shards by their counts and the fixed names."""
  if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
    return []
  names = list(info["files"]) if isinstance(info.get("files"), dict) else (
      _expected_shards(info) + sorted(_FIXED_NAMES))
  # Plain names only: a damaged or hostile dataset_info.json must not reach outside the folder.
  return [n for n in names if isinstance(n, str) and n == os.path.basename(n)
          and n not in ("", ".", "..")]


def _state_owned(out: str) -> list[str]:
  """Shards of an unfinished build: each has its statistics in .build/, written just before
  the shard was renamed into place."""
  state = os.path.join(out, STATE_DIR)
  if not os.path.isdir(state):
    return []
  return sorted(n[:-len(".npz")] for n in os.listdir(state)
                if n.endswith(".npz") and SHARD_PATTERN.fullmatch(n[:-len(".npz")]))


def _remove_previous(out: str, info: Optional[dict]) -> None:
  """--overwrite: removes what the previous build recorded writing, nothing else."""
  safety.remove_files(out, _recorded_files(info) + _state_owned(out), "--overwrite")
  state = os.path.join(out, STATE_DIR)
  if os.path.isdir(state):
    safety.remove_files(state, [STATE_FILENAME] + [f"{n}.npz" for n in _state_owned(out)]
                        + safety.stale_temps(state), "--overwrite")
    # .npz of shards removed above are gone; any left are of shards a user moved: keep.
    safety.remove_dir_if_empty(state)


def _expected_shards(info: dict) -> list[str]:
  return [features.shard_name(split, i, meta["num_shards"])
          for split, meta in sorted(info.get("splits", {}).items())
          for i in range(meta["num_shards"])]


def _state_path(output_dir: str, shard: str) -> str:
  return os.path.join(output_dir, STATE_DIR, shard + ".npz")


def _is_complete(task: _ShardTask) -> bool:
  name = features.shard_name(task.split, task.index, task.num_shards)
  return (os.path.exists(os.path.join(task.output_dir, name))
          and os.path.exists(_state_path(task.output_dir, name)))


# ---------------------------------------------------------------------------------------------
# Workers: one shard at a time.

_counter = None   # images done, shared with the parent for the progress bar


def _init_worker(counter) -> None:
  global _counter
  _counter = counter


def _write_shard(task: _ShardTask) -> tuple[str, int]:
  """Converts the task's images into its shard; returns (shard name, records written)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  name = features.shard_name(task.split, task.index, task.num_shards)
  out = task.output_dir
  # In the state folder, named by host and pid: a killed build's temporary is then known
  # for the builder's own (safety.stale_temps), never confused with a user's file.
  temp = os.path.join(out, STATE_DIR, safety.temp_name(name))
  stats = statistics.PixelStatistics(task.image_size) if task.split == "train" else None
  skipped, written, pending = [], 0, 0
  try:
    with tf.io.TFRecordWriter(temp) as writer:
      for item in task.items:
        try:
          converted = image.convert(sources.read_bytes(item), task.image_size,
                                    task.jpeg_quality, task.max_image_pixels)
        except image.SkipImage as e:
          skipped.append((item.filename, str(e)))
        except OSError as e:
          skipped.append((item.filename, f"cannot read: {e}"))
        else:
          if stats is not None:
            stats.add(converted.pixels)
          class_id, text = task.classes[item.label]
          encoded, image_format = converted.encoded, features.FORMAT_JPEG
          if task.encoding == "raw":
            encoded = np.ascontiguousarray(converted.pixels, np.uint8).tobytes()
            image_format = features.FORMAT_RAW
          writer.write(features.make_example(
              encoded, label=item.label, synset=class_id, text=text,
              filename=item.filename, height=converted.height, width=converted.width,
              image_format=image_format))
          written += 1
        pending += 1
        if pending == _PROGRESS_EVERY:
          _count(pending)
          pending = 0
    _count(pending)
    # The statistics first, then the shard: a shard under its final name always has them.
    arrays = stats.arrays() if stats is not None else {}
    arrays["meta"] = np.array(json.dumps({"num_examples": written, "skipped": skipped,
                                          "num_bytes": os.path.getsize(temp)}))
    files.write_npz(_state_path(out, name), arrays)
    os.replace(temp, os.path.join(out, name))
  finally:
    if os.path.exists(temp):
      os.remove(temp)
  return name, written


def _count(n: int) -> None:
  if _counter is not None and n:
    with _counter.get_lock():
      _counter.value += n


# ---------------------------------------------------------------------------------------------
# Progress bar.


# ---------------------------------------------------------------------------------------------
# Finishing: combine the per-shard results in shard order.


def _finalize(tasks: list[_ShardTask], source: sources.Source, config: BuildConfig,
              record: dict, counts: dict) -> dict:
  out = config.output_dir
  splits, skipped = {}, []
  train_stats = statistics.PixelStatistics(config.image_size)
  for task in tasks:
    name = features.shard_name(task.split, task.index, task.num_shards)
    with np.load(_state_path(out, name), allow_pickle=False) as arrays:
      meta = json.loads(str(arrays["meta"]))
      if task.split == "train":
        train_stats.merge(statistics.PixelStatistics.from_arrays(arrays))
    split = splits.setdefault(task.split, {"num_examples": 0, "num_shards": task.num_shards,
                                           "num_skipped": 0, "shard_lengths": [],
                                           "shard_bytes": []})
    split["num_examples"] += meta["num_examples"]
    split["shard_lengths"].append(meta["num_examples"])
    split["shard_bytes"].append(meta.get("num_bytes", os.path.getsize(os.path.join(out, name))))
    split["num_skipped"] += len(meta["skipped"])
    skipped.extend((task.split, f, r) for f, r in meta["skipped"])
  for split, rejected in source.rejected.items():
    if split in splits:
      splits[split]["num_skipped"] += len(rejected)
    skipped.extend((split, f, r) for f, r in rejected)
  skipped.sort(key=lambda s: (sources.SPLITS.index(s[0]), s[1]))

  mean_image = train_stats.mean_image()
  if mean_image is not None:
    files.write_npy(os.path.join(out, dataset_info.MEAN_IMAGE_FILENAME),
                                  mean_image)
  files.write_text(os.path.join(out, LABELS_FILENAME),
                     "".join(f"{i}\t{c}\t{n}\n" for i, (c, n) in enumerate(source.classes)))
  files.write_text(os.path.join(out, SKIPPED_FILENAME),
                     "".join(f"{s}\t{f}\t{r}\n" for s, f, r in skipped))
  info = {
      "format": "keras_alexnet",
      "label_offset": 0,
      "image_size": config.image_size,
      "encoding": config.encoding,
      "num_classes": len(source.classes),
      "classes": [list(c) for c in source.classes],
      "splits": splits,
      "mean_image": dataset_info.MEAN_IMAGE_FILENAME if mean_image is not None else None,
      "num_train_images_in_statistics": train_stats.num_images,
      "build": record,
      # What --train_shards / --validation_shards chose, and why.
      "shards": {split: dict(meta) for split, meta in counts.items()},
      **train_stats.summary(),
  }
  # Every file this build wrote, with its size: what --overwrite may remove, and what the
  # pipeline checks the shards against (keras_alexnet.data_sources.check_shards).
  written = [features.shard_name(t.split, t.index, t.num_shards) for t in tasks] + [
      LABELS_FILENAME, SKIPPED_FILENAME] + (
          [dataset_info.MEAN_IMAGE_FILENAME] if mean_image is not None else [])
  info["files"] = {n: os.path.getsize(os.path.join(out, n)) for n in written}
  info["files"][dataset_info.FILENAME] = None   # itself
  # dataset_info.json last: its presence means the build is complete.
  files.write_json(os.path.join(out, dataset_info.FILENAME), info)
  state = os.path.join(out, STATE_DIR)
  if os.path.isdir(state):
    names = set(os.listdir(state))
    ours = [STATE_FILENAME] + [f"{n}.npz" for n in info["files"]] + safety.stale_temps(state)
    for name in ours:
      if name in names and safety.is_regular(os.path.join(state, name)):
        os.remove(os.path.join(state, name))
    safety.remove_dir_if_empty(state)
  return info


# ---------------------------------------------------------------------------------------------
# The entry point as a function.


def _pool(workers: int, counter):
  """Worker processes forked from a clean server that has imported TF and this module once
  (not from a parent whose TF runtime may already hold threads and locks)."""
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(_WORKER_PRELOAD)
  # Workers run only this module's functions, so they need not re-run the caller's main
  # module, as multiprocessing would: a script calling build() without an
  # `if __name__ == "__main__":` guard would otherwise start builds in its workers. The pool
  # hides the main module's origin while its workers start (safety.WorkerPool), and fails
  # with a message, rather than waiting for ever, when one of them dies.
  return safety.WorkerPool(workers, context, _init_worker, (counter,))


def build(config: BuildConfig) -> Optional[dict]:
  """Builds (or resumes, or finds complete) the dataset described by `config`.

  Returns:
    The dataset_info dict once every shard of the dataset exists; None when this host's
    shards are done but other hosts' are not (rerun any host's command to finish).

  Raises:
    InputError: bad input, flags or output folder; raised before anything is written.
  """
  _check_config(config)
  if config.input is None:
    raise InputError("--input is required to build (or pass only --output_dir and --verify)")
  workers = num_workers(config.num_workers)
  counter = multiprocessing.get_context("forkserver").Value("q", 0)
  pool = None

  def get_pool():   # started on first need: bad input is reported before the workers start
    nonlocal pool
    if pool is None:
      pool = _pool(workers, counter)
    return pool

  try:
    map_fn = (lambda f, xs: get_pool().map(f, xs, chunksize=8)) if workers > 1 else map
    started = time.monotonic()
    source = releases.find_source(
        config.input, config.layout, config.classes_file, config.validation_labels_file,
        config.test_labels_file, config.meta_file, config.validation_fraction, config.seed,
        map_fn, config.devkit_dir, allow_empty_classes=config.allow_empty_classes,
        follow_outside_links=config.follow_outside_links)
    counts = _shard_counts(source, config, workers * config.num_hosts)
    record = _build_record(source, config, counts)
    _keep_auto_counts(counts, record, _previous_build(config.output_dir)[1])
    tasks = _shards(source, config, counts)
    logging.info("Found %s in %.1f s (%s layout, %d classes).", ", ".join(
        f"{len(v):,} {k} images" for k, v in source.splits.items()),
        time.monotonic() - started, source.layout, len(source.classes))
    for split, meta in counts.items():
      logging.info("%s: %d shards (%s).", split, meta["num_shards"], meta["why"])
    planned = [features.shard_name(t.split, t.index, t.num_shards) for t in tasks]
    info = _prepare_output(config, record, planned + sorted(_FIXED_NAMES))
    if info is not None:
      logging.info("%s already holds this dataset, complete; nothing to do.", config.output_dir)
      return info
    os.makedirs(os.path.join(config.output_dir, STATE_DIR), exist_ok=True)
    files.write_json(
        os.path.join(config.output_dir, STATE_DIR, STATE_FILENAME), record)

    mine = [t for i, t in enumerate(tasks) if i % config.num_hosts == config.host_index]
    todo = [t for t in mine if not _is_complete(t)]
    if len(todo) < len(mine):
      logging.info("Resuming: %d of this host's %d shards are already complete.",
                   len(mine) - len(todo), len(mine))
    progress = cli.Progress(sum(len(t.items) for t in todo), "", config.progress)
    if workers == 1 or len(todo) <= 1:
      _init_worker(counter)
      for task in todo:
        _write_shard(task)
        progress.update(counter.value)
    else:
      for _ in get_pool().map_unordered(_write_shard, todo,
                                        lambda: progress.update(counter.value)):
        progress.update(counter.value)
    progress.update(counter.value, final=True)
  except OSError as e:
    if safety.is_disk_full(e):
      raise safety.BuildError(safety.free_space_message(config.output_dir, e)) from e
    raise
  finally:
    if pool is not None:
      pool.shutdown()
  remaining = [t for t in tasks if not _is_complete(t)]
  if remaining:
    logging.info("This host's shards are done; %d shards of other hosts remain. The host that "
                 "finishes last writes %s (or rerun this command then).", len(remaining),
                 dataset_info.FILENAME)
    return None
  try:
    info = _finalize(tasks, source, config, record, counts)
  except OSError as e:
    if safety.is_disk_full(e):
      raise safety.BuildError(safety.free_space_message(config.output_dir, e)) from e
    if not isinstance(e, FileNotFoundError):
      raise
    # Another host found every shard complete at the same time, finalized first and removed
    # the per-shard sums: its dataset_info.json is this build's.
    info = dataset_info.read(config.output_dir)
    if not info or info.get("build") != record:
      raise
  logging.info("Wrote %s: %s.", config.output_dir, ", ".join(
      f"{k} {v['num_examples']:,} images in {v['num_shards']} shards "
      f"({v['num_skipped']} skipped)" for k, v in info["splits"].items()))
  return info


# ---------------------------------------------------------------------------------------------
# --verify


def _first(feature_map, key: str, kind: str):
  """The first value of a feature; KeyError/IndexError when it is absent or empty."""
  return getattr(feature_map[key], kind).value[0]


def _verify_shard(args) -> tuple[str, int, list[str]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path, expected, classes, image_size, encoding = args
  name = os.path.basename(path)
  problems, count = [], 0
  if not os.path.exists(path):
    return name, 0, [f"{name}: missing"]
  try:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      count += 1
      where = f"{name} record {count - 1}"
      try:
        parsed = tf.train.Example.FromString(raw).features.feature
        label = _first(parsed, features.LABEL, "int64_list")
        synset = _first(parsed, features.SYNSET, "bytes_list").decode()
        text = _first(parsed, features.TEXT, "bytes_list").decode()
        height = _first(parsed, features.HEIGHT, "int64_list")
        width = _first(parsed, features.WIDTH, "int64_list")
        encoded = _first(parsed, features.ENCODED, "bytes_list")
        filename = _first(parsed, features.FILENAME, "bytes_list").decode()
      except (KeyError, IndexError, ValueError, UnicodeDecodeError) as e:
        problems.append(f"{where}: malformed example ({type(e).__name__}: {e})")
        continue
      if not 0 <= label < len(classes):
        problems.append(f"{where} ({filename}): label {label} not in 0..{len(classes) - 1}")
      elif [synset, text] != list(classes[label]):
        problems.append(f"{where} ({filename}): label {label} is {classes[label]}, but the "
                        f"record names {synset!r} / {text!r}")
      if encoding == "raw":
        if len(encoded) != height * width * 3 or (image_size and (height, width) != (
            image_size, image_size)):
          problems.append(f"{where} ({filename}): {len(encoded)} raw bytes for "
                          f"{width}x{height}x3, dataset_info says {image_size}x{image_size}")
        continue
      try:
        decoded = Image.open(io.BytesIO(encoded))
        decoded.load()
        if decoded.format != "JPEG" or decoded.mode != "RGB":
          problems.append(f"{where} ({filename}): {decoded.format} {decoded.mode}, expected "
                          "an RGB JPEG")
        if decoded.size != (width, height):
          problems.append(f"{where} ({filename}): image is {decoded.size[0]}x"
                          f"{decoded.size[1]}, the record says {width}x{height}")
        if image_size and decoded.size != (image_size, image_size):
          problems.append(f"{where} ({filename}): image is {decoded.size[0]}x"
                          f"{decoded.size[1]}, dataset_info says {image_size}x{image_size}")
      except Exception as e:  # whatever Pillow raises on damaged bytes
        problems.append(f"{where} ({filename}): does not decode: {e}")
  except tf.errors.OpError as e:
    problems.append(f"{name}: unreadable after {count} records: {e.message}")
  if count != expected:
    problems.append(f"{name}: {count} records, dataset_info says {expected}")
  return name, count, problems


def verify(output_dir: str, workers: int = 0, progress: bool = True) -> list[str]:
  """Re-reads every shard: record counts, CRCs, JPEG decoding, labels and names.

  Returns the problems found (empty: the dataset is sound). Raises InputError when
  output_dir has no dataset_info.json.
  """
  try:
    info = dataset_info.read(output_dir)
  except ValueError as e:
    raise InputError(str(e)) from None
  if info is None:
    raise InputError(f"--output_dir={output_dir} has no {dataset_info.FILENAME}: nothing to "
                     "verify (build it first: python -m tfrecords.build --input=... "
                     f"--output_dir={output_dir})")
  classes = [list(c) for c in info["classes"]]
  jobs = []
  for split, meta in sorted(info["splits"].items()):
    lengths = meta.get("shard_lengths") or [None] * meta["num_shards"]
    for index, expected in enumerate(lengths):
      jobs.append((os.path.join(output_dir, features.shard_name(split, index,
                                                                meta["num_shards"])),
                   expected, classes, info.get("image_size"), info.get("encoding", "jpeg")))
  bar = cli.Progress(len(jobs), "", progress, unit="shards")
  workers = num_workers(workers)
  pool = _pool(workers, None) if workers > 1 else None
  problems = []
  try:
    for _, _, found in (pool.map(_verify_shard, jobs) if pool else map(_verify_shard, jobs)):
      problems.extend(found)
      bar.update(bar.done + 1)
  finally:
    if pool is not None:
      pool.shutdown()
  bar.update(bar.done, final=True)
  return problems


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_shards(name: str, value: str) -> Union[int, str]:
  """The value of --train_shards / --validation_shards: "auto" or a number of shards."""
  text = value.strip().lower()
  if text == AUTO:
    return AUTO
  if text.isdigit() and 1 <= int(text) <= MAX_SHARDS:
    return int(text)
  raise SystemExit(f"error: --{name}={value}: expected 'auto' or a number of shards in "
                   f"1..{MAX_SHARDS}")


def _exit_on_signal(signum, frame) -> None:
  """SIGTERM (and SIGINT) end the build at once: the finally blocks stop the workers and
  remove the shard being written; completed shards are kept for the next run to resume."""
  del frame
  signal.signal(signum, signal.SIG_DFL)   # a second signal kills outright
  print(f"{signal.Signals(signum).name} received: stopping; rerun the same command to resume.",
        file=sys.stderr, flush=True)
  raise SystemExit(128 + signum)


def main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _exit_on_signal)
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  resize = FLAGS.resize.strip().lower()
  if resize != "none" and not resize.isdigit():
    raise SystemExit(f"error: --resize={FLAGS.resize}: expected a size such as 256, or 'none'")
  config = BuildConfig(
      input=FLAGS.input, output_dir=FLAGS.output_dir, layout=FLAGS.layout,
      image_size=None if resize == "none" else int(resize), jpeg_quality=FLAGS.jpeg_quality,
      train_shards=parse_shards("train_shards", FLAGS.train_shards),
      validation_shards=parse_shards("validation_shards", FLAGS.validation_shards),
      seed=FLAGS.seed, classes_file=FLAGS.classes_file,
      validation_labels_file=FLAGS.validation_labels_file, num_workers=FLAGS.num_workers,
      host_index=FLAGS.host_index, num_hosts=FLAGS.num_hosts, overwrite=FLAGS.overwrite,
      progress=FLAGS.progress, test_shards=FLAGS.test_shards,
      validation_fraction=FLAGS.validation_fraction, test_labels_file=FLAGS.test_labels_file,
      meta_file=FLAGS.meta_file, devkit_dir=FLAGS.devkit_dir, encoding=FLAGS.encoding,
      max_image_pixels=FLAGS.max_image_pixels, allow_empty_classes=FLAGS.allow_empty_classes,
      follow_outside_links=FLAGS.follow_outside_links)
  try:
    if config.input is not None or not FLAGS.verify:
      info = build(config)
      if info is None:
        return
    if FLAGS.verify:
      problems = verify(config.output_dir, config.num_workers, config.progress)
      for problem in problems[:100]:
        print(problem, file=sys.stderr)
      if problems:
        raise SystemExit(f"verify: {len(problems)} problems in {config.output_dir}")
      print(f"verify: every shard of {config.output_dir} is sound", file=sys.stderr)
  except (InputError, safety.BuildError) as e:
    raise SystemExit(f"error: {e}") from None


def _define_flags() -> None:
  """Defined when run as the command, not on import: build() is also a library function, and
  absl's flags are global (tfrecords.benchmark has its own --seed, for one)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("input", None, "Folder with ILSVRC2012_img_{train,val}.tar, or train/ and "
                      "val/ folders (ILSVRC extracted, or any <split>/<class>/ images).")
  flags.DEFINE_string("output_dir", None, "Where the shards and dataset_info.json go.")
  flags.DEFINE_enum("layout", "auto", releases.LAYOUTS, "Force the input layout (fall2011 and "
                    "ilsvrc2010: see tfrecords/releases.py).")
  flags.DEFINE_string("resize", str(DEFAULT_IMAGE_SIZE), "Shorter side resized to N, then the "
                      "central NxN crop (the paper: 256); 'none' keeps the original pixels.")
  flags.DEFINE_integer("jpeg_quality", DEFAULT_JPEG_QUALITY, "JPEG quality of re-encoded images.")
  flags.DEFINE_string("encoding", "jpeg", "What each record stores: 'jpeg', or 'raw' (the "
                      "uint8 pixels; needs --resize=N; decode-free reading, ~8x the bytes).")
  flags.DEFINE_string("train_shards", DEFAULT_TRAIN_SHARDS, "Training shards: a number, or "
                      "auto: 1024 for ImageNet-sized, else ~128 MiB each, at least one per "
                      "worker x host, at most one per image.")
  flags.DEFINE_string("validation_shards", DEFAULT_VALIDATION_SHARDS, "Validation shards: a "
                      "number, or auto (128 for ImageNet-sized, else as --train_shards).")
  flags.DEFINE_integer("seed", 0, "Seed of the order of images across shards.")
  flags.DEFINE_string("classes_file", None, "'class_id<TAB>name' lines replacing the packaged "
                      "1000 ILSVRC-2012 classes (or naming class folders).")
  flags.DEFINE_string("validation_labels_file", None, "Labels of a flat validation folder: one "
                      "class id per line in sorted file order, or 'filename class_id' lines. "
                      "Default for ILSVRC2012_val_*.JPEG: the packaged ground truth.")
  flags.DEFINE_integer("num_workers", 0, "Worker processes; 0: one per core.")
  flags.DEFINE_integer("host_index", 0, "This machine's index when --num_hosts > 1.")
  flags.DEFINE_integer("num_hosts", 1, "Machines writing disjoint shards of one dataset into "
                       "a shared --output_dir (run the same command on each).")
  flags.DEFINE_bool("overwrite", False, "Replace a different dataset in --output_dir.")
  flags.DEFINE_bool("verify", False, "Afterwards, re-read every shard and check it.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  flags.DEFINE_integer("test_shards", None, "Test shards (ILSVRC-2010); default: as "
                       "--validation_shards says (auto: sized by the test split's bytes).")
  flags.DEFINE_float("validation_fraction", None, "Hold out this share (in (0, 1)) of every "
                     "class's training images, seeded by --seed, as the validation split: for "
                     "datasets without one (Fall 2011, class folders with only train/).")
  flags.DEFINE_string("test_labels_file", None, "ILSVRC-2010: the test ground truth (default: "
                      "ILSVRC2010_test_ground_truth.txt found under --input).")
  flags.DEFINE_string("devkit_dir", None, "ILSVRC-2010: the extracted devkit (its data/ holds "
                      "meta.mat and ILSVRC2010_validation_ground_truth.txt), when not under "
                      "--input.")
  flags.DEFINE_string("meta_file", None, "ILSVRC-2010: the devkit's meta.mat (needs scipy) or "
                      "'ILSVRC2010_ID wnid [words]' lines (default: meta.mat/meta.txt found "
                      "under --input).")
  flags.DEFINE_integer("max_image_pixels", image.MAX_IMAGE_PIXELS, "Images with more pixels "
                       "(width x height, read from the header before decoding) are skipped "
                       "and listed in skipped.txt: bounds each worker's memory.")
  flags.DEFINE_bool("allow_empty_classes", False, "A class folder without images is only a "
                    "warning (the class gets no images) instead of an error.")
  flags.DEFINE_bool("follow_outside_links", False, "Follow symbolic links that lead outside "
                    "--input (by default they are listed in skipped.txt, not followed).")
  flags.mark_flag_as_required("output_dir")


def run() -> None:
  """The command (`python -m tfrecords.build`, `keras-alexnet-build`)."""
  cli.run(main, _define_flags)


if __name__ == "__main__":
  # Run the functions of the module imported under its own name, so what the worker processes
  # unpickle is tfrecords.build.X (the module the forkserver preloads), not __main__.X.
  from . import build as _build
  _build.run()
