"""How fast the input pipeline and the device-side augmentation run, against same-run bounds.

  python -m keras_alexnet.pipeline_benchmark [--num_images=8192] [--batch_size=128]
      [--data_dir=SHARDS]

- cpu pipeline: images/s of keras_alexnet.dataset up to uint8 batches (read, shuffle, parse,
  decode, batch), over 256x256 JPEG shards written for the run, like the builder's output; and
  per core: images per CPU-second of this process. The bound: tf.io.decode_jpeg alone over the
  same JPEG bytes, held in memory, on all cores (a tf.data map with AUTOTUNE and nothing
  else). The comparator: keras_alexnet.pil_loader, a PyTorch-style loader (PIL in one process
  per core) over the same JPEGs as files; and, where torch is installed, PyTorch's own
  DataLoader over them (one worker per core). The decode-free path: raw shards of the same
  images (from the page cache, and once after evicting them from it). The options
  decode_crop and dct_method=INTEGER_ACCURATE against the default. Targets (the issue's,
  printed met or not): JPEG >= 0.9 of the bound and >= 1.5x the PIL loader, raw >= 5x JPEG.
- augment: images/s of preprocessing.augment (crop, mirror, lighting, per-pixel mean) on the
  default device, compiled with XLA and not; and a map_fn of tf.image.crop_to_bounding_box
  doing less (crop and mirror only) for comparison.

Figures are medians over repeated passes after a warm-up pass. `rows()` returns them for
keras_alexnet.benchmark's table.
"""

import dataclasses
import os
import statistics
import tempfile
import time
from typing import List, Optional

from absl import flags
import numpy as np
import tensorflow as tf

from keras_alexnet import bench
from keras_alexnet import data_sources
from keras_alexnet import dataset
from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import features
from keras_alexnet import files
from keras_alexnet import preprocessing

JPEG_QUALITY = 95   # tfrecords.build's default; sets how hard decoding is.
# Records per generated shard: ImageNet's train shards hold 1,251 (1,281,167 in 1,024), and
# per-shard costs (opening a file, starting its reader) should weigh as little as there.
RECORDS_PER_SHARD = 1024
# What map_fn_crop_rate does, for a like-for-like comparison.
CROP_AND_MIRROR = preprocessing.AugmentConfig(pca_lighting=False, mean="per_channel")


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _natural_images(rng, count: int) -> np.ndarray:
  """`count` 256x256 images with photo-like statistics for the codec: smooth shapes plus grain
  (pure noise would make JPEGs several times larger and slower to decode than photographs)."""
  size = decoding.STORED_SIZE
  coarse = rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
  images = tf.image.resize(coarse, [size, size], method="bicubic").numpy()
  images += rng.normal(0, 6, images.shape).astype(np.float32)
  return np.clip(images, 0, 255).astype(np.uint8)


def write_records(data_dir: str, num_images: int, num_shards: Optional[int] = None,
                  seed: int = 0, encoding: str = "jpeg",
                  jpegs: Optional[List[bytes]] = None) -> str:
  """Train shards of 256x256 JPEGs (or, encoding="raw", their decoded pixels) and a
  dataset_info.json, as the builder writes them. jpegs: these images instead of generated
  ones. num_shards: by default, shards of at most RECORDS_PER_SHARD records, as ImageNet's."""
  rng = np.random.default_rng(seed)
  os.makedirs(data_dir, exist_ok=True)
  if jpegs is None:
    jpegs = []
    for start in range(0, num_images, 256):
      jpegs += [tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy()
                for image in _natural_images(rng, min(256, num_images - start))]
  num_images = len(jpegs)
  num_shards = num_shards or max(1, -(-num_images // RECORDS_PER_SHARD))
  per_shard = -(-num_images // num_shards)
  for shard in range(num_shards):
    path = os.path.join(data_dir, features.shard_name("train", shard, num_shards))
    with tf.io.TFRecordWriter(path) as writer:
      for i in range(shard * per_shard, min(num_images, (shard + 1) * per_shard)):
        jpeg = jpegs[i]
        encoded, image_format = jpeg, features.FORMAT_JPEG
        if encoding == "raw":
          encoded = tf.io.decode_jpeg(jpeg, channels=3).numpy().tobytes()
          image_format = features.FORMAT_RAW
        writer.write(features.make_example(encoded, label=i % 1000, synset="n0", text="",
                                           filename=f"{i}.JPEG", height=256, width=256,
                                           image_format=image_format))
  files.write_json(os.path.join(data_dir, dataset_info.FILENAME), {
      "format": "keras_alexnet", "label_offset": 0, "image_size": decoding.STORED_SIZE,
      "num_classes": 1000, "classes": None, "encoding": encoding,
      "splits": {"train": {"num_examples": num_images, "num_shards": num_shards}}})
  return data_dir


def shard_jpegs(data_dir: str) -> List[bytes]:
  """The encoded images of data_dir's training shards, in file order."""
  files = data_sources.list_shards(data_dir, "train")
  return [tf.train.Example.FromString(r.numpy()).features.feature[features.ENCODED]
          .bytes_list.value[0] for r in tf.data.TFRecordDataset(files)]


def evict_from_page_cache(data_dir: str) -> None:
  """Asks the kernel to drop data_dir's shards from the page cache (posix_fadvise
  DONTNEED: no privileges needed, only these files), so the next pass reads the disk."""
  for path in data_sources.list_shards(data_dir, "train"):
    with open(path, "rb") as f:
      os.fsync(f.fileno())   # dirty pages are not dropped
      os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _timed(iterable):
  """(wall seconds, CPU seconds of this process, all threads) to run through `iterable`."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in iterable:
    pass
  return time.perf_counter() - wall, time.process_time() - cpu


def _pipeline_pass(config: data_sources.DataConfig, batch_size: int):
  """A function that times one training epoch (a new one each call) of `create_split`. The
  epoch's dataset is built before the clock starts: building it (listing shards, tracing the
  parse function) is a fixed cost per epoch, reported on its own by `setup_seconds`, that a
  small benchmark epoch would inflate several hundred times over an ImageNet epoch."""
  epoch = [0]

  def run():
    epoch[0] += 1
    return _timed(dataset.create_split(config, True, batch_size, epoch=epoch[0]))

  return run


def setup_seconds(config: data_sources.DataConfig, batch_size: int, repeats: int = 3) -> float:
  """Median wall time of building one epoch's dataset with `create_split`."""
  times = []
  for epoch in range(repeats):
    start = time.perf_counter()
    dataset.create_split(config, True, batch_size, epoch=epoch)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _decode_pass(data_dir: str, batch_size: int, jpegs: Optional[List[bytes]] = None):
  """A function that times decoding the same JPEGs, held in memory, with tf.io.decode_jpeg
  alone on all cores (a tf.data map with AUTOTUNE and nothing else): the bound."""
  jpegs = shard_jpegs(data_dir) if jpegs is None else jpegs
  ds = tf.data.Dataset.from_tensor_slices(jpegs).map(
      lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=False).batch(batch_size, drop_remainder=True)
  return lambda: _timed(ds)


def _pil_pass(loader, paths):
  def run():
    wall, cpu, _, _ = loader.run(paths)
    return wall, cpu
  return run


@dataclasses.dataclass
class CpuFigures:
  bound: float              # images/s, wall clock
  pipeline: float
  ratio: float              # median over alternated pairs of passes
  bound_per_core: float     # images per CPU-second of the process (all its threads)
  pipeline_per_core: float
  ratio_per_core: float
  # Every pass measured, name -> {"rate", "per_core"} (medians), and paired ratios
  # "a/b" -> {"rate", "per_core"}: medians over the alternated rounds of a's rate over b's.
  passes: dict = dataclasses.field(default_factory=dict)
  ratios: dict = dataclasses.field(default_factory=dict)
  cold: Optional[dict] = None   # the raw path from a cold page cache: {"rate", "per_core"}


# The comparisons the benchmark reports, numerator over denominator: the targets.
TARGETS = (("jpeg", "bound", 0.9), ("jpeg", "pil", 1.5), ("raw", "jpeg", 5.0))


def cpu_figures(config: data_sources.DataConfig, batch_size: int, repeats: int = 5,
                raw_dir: Optional[str] = None, pil_workers: int = 0, torch_workers: int = 0,
                options: bool = False) -> CpuFigures:
  """The CPU pipeline against decode_jpeg alone and, if asked, against the PIL loader
  (pil_workers processes), PyTorch's DataLoader (torch_workers workers; skipped where torch
  is not installed), the raw shards of the same images in raw_dir, and the
  speed-for-exactness options (options=True). Passes alternate, round after round, so that
  a change of load on a shared machine hits all, and each ratio compares passes of the same
  round. Per core is images per CPU-second consumed (this process; for the PIL loader, this
  process and its workers), which other processes' load disturbs less than wall-clock rates.
  """
  import contextlib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import pil_loader  # pylint: disable=g-import-not-at-top
  num = data_sources.dataset_metadata(config)["num_examples"]["train"] // batch_size * batch_size
  jpegs = shard_jpegs(config.data_dir)
  passes = {"bound": _decode_pass(config.data_dir, batch_size, jpegs),
            "jpeg": _pipeline_pass(config, batch_size)}
  if raw_dir is not None:
    passes["raw"] = _pipeline_pass(dataclasses.replace(config, data_dir=raw_dir), batch_size)
  if options:
    passes["jpeg_decode_crop"] = _pipeline_pass(
        dataclasses.replace(config, decode_crop=True), batch_size)
    passes["jpeg_integer_accurate"] = _pipeline_pass(
        dataclasses.replace(config, dct_method="INTEGER_ACCURATE"), batch_size)
  with contextlib.ExitStack() as stack:
    if pil_workers or torch_workers:
      folder = stack.enter_context(tempfile.TemporaryDirectory())
      paths = pil_loader.write_files(jpegs, folder)
    if pil_workers:
      loader = stack.enter_context(pil_loader.PilLoader(pil_workers, batch_size))
      passes["pil"] = _pil_pass(loader, paths)
    if torch_workers and pil_loader.torch_available():
      passes["torch"] = lambda: pil_loader.dataloader_pass(paths, torch_workers, batch_size)[:2]
    # Shards and files written just now are dirty in the page cache: reading them while the
    # kernel writes them back measured 2x slower for raw shards (3290 -> 1697 img per CPU-s)
    # and 20% for the PIL loader's files. A dataset read for training is long on disk.
    os.sync()
    for run in passes.values():
      run()   # warm-up: tracing, thread pools, worker start, page cache
    rounds = [{name: run() for name, run in passes.items()} for _ in range(repeats)]
    cold = None
    if raw_dir is not None:
      evict_from_page_cache(raw_dir)
      wall, cpu = passes["raw"]()
      cold = {"rate": num / wall, "per_core": num / cpu}
  median = statistics.median
  figures = {name: {"rate": median(num / r[name][0] for r in rounds),
                    "per_core": median(num / r[name][1] for r in rounds)} for name in passes}
  ratios = {}
  for a in passes:
    for b in passes:
      if a != b:
        ratios[f"{a}/{b}"] = {"rate": median(r[b][0] / r[a][0] for r in rounds),
                              "per_core": median(r[b][1] / r[a][1] for r in rounds)}
  return CpuFigures(
      bound=figures["bound"]["rate"], pipeline=figures["jpeg"]["rate"],
      ratio=ratios["jpeg/bound"]["rate"], bound_per_core=figures["bound"]["per_core"],
      pipeline_per_core=figures["jpeg"]["per_core"],
      ratio_per_core=ratios["jpeg/bound"]["per_core"], passes=figures, ratios=ratios,
      cold=cold)


def augment_rate(batch_size: int, jit_compile: bool, repeats: int = 5,
                 config: preprocessing.AugmentConfig = preprocessing.AugmentConfig()) -> float:
  """Images/s of preprocessing.augment (default: all of it, with a per-pixel mean image) on
  the default device."""
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8))
  stats = dataclasses.replace(dataset_info.imagenet_statistics(), mean_image=rng.uniform(
      0, 255, (256, 256, 3)).astype(np.float32))
  step = tf.Variable(0, dtype=tf.int64)

  @tf.function(jit_compile=jit_compile)
  def augment():
    step.assign_add(1)
    return tf.reduce_sum(preprocessing.augment(images, stats, config, seed=tf.stack([
        tf.constant(0, tf.int64), step])))

  return batch_size / bench.median_seconds(lambda: augment().numpy(), repeats)


def map_fn_crop_rate(batch_size: int, repeats: int = 5) -> float:
  """Images/s of the per-image alternative: map_fn of crop_to_bounding_box + a mirror."""
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8))
  size = decoding.IMAGE_SIZE

  @tf.function
  def crop():
    offsets = tf.random.uniform([batch_size, 2], 0, decoding.MAX_OFFSET + 1, tf.int32)
    mirror = tf.random.uniform([batch_size]) < 0.5

    def one(args):
      image, offset, flip = args
      patch = tf.image.crop_to_bounding_box(image, offset[0], offset[1], size, size)
      patch = tf.cond(flip, lambda: tf.reverse(patch, [1]), lambda: patch)
      return tf.cast(patch, tf.float32)

    return tf.reduce_sum(tf.map_fn(one, (images, offsets, mirror),
                                   fn_output_signature=tf.float32))

  return batch_size / bench.median_seconds(lambda: crop().numpy(), repeats)


def _dataloader_rows(p, r, workers) -> List[bench.Row]:
  return [
      bench.Row(f"PyTorch DataLoader ({workers} workers)", p["torch"]["rate"], detail=(
          f"{p['torch']['per_core']:.0f} img per CPU-s (workers' too); PIL, shuffle, default "
          "collate, workers started each epoch")),
      bench.Row("cpu pipeline vs DataLoader", p["jpeg"]["rate"],
                "PyTorch DataLoader", r["jpeg/torch"]["rate"],
                f"ratio per core {r['jpeg/torch']['per_core']:.2f}"),
  ]


def rows(num_images: int = 8192, batch_size: int = 128, data_dir: Optional[str] = None,
         augment_batch_size: int = 128, repeats: int = 5) -> List[bench.Row]:
  """Every figure of this benchmark, measured now, in this process. data_dir: existing
  shards to measure the CPU pipeline on (e.g. real ImageNet) instead of generated ones; their
  raw copy for the decode-free rows is written to a temporary folder."""
  n = cores()
  with tempfile.TemporaryDirectory() as tmp:
    if data_dir is None:
      data_dir = write_records(os.path.join(tmp, "records"), num_images)
    else:
      num_images = data_sources.dataset_metadata(data_sources.DataConfig(data_dir))["num_examples"][
          "train"]
    raw_dir = write_records(os.path.join(tmp, "raw"), 0, encoding="raw",
                            jpegs=shard_jpegs(data_dir))
    # A buffer of a quarter epoch at most: the default 10,000 would hold a small epoch whole,
    # and filling it (reading without decoding) would be most of the time, while on ImageNet
    # it is under 1% of an epoch.
    config = data_sources.DataConfig(data_dir, shuffle_buffer=max(1, min(10_000, num_images // 4)))
    cpu = cpu_figures(config, batch_size, repeats, raw_dir=raw_dir, pil_workers=n,
                      torch_workers=n, options=True)
    setup = setup_seconds(config, batch_size)
  p, r = cpu.passes, cpu.ratios

  def detail(name, extra=""):
    return f"{p[name]['per_core']:.0f} img per CPU-s" + (f"; {extra}" if extra else "")

  def vs(a, b):
    return f"ratio per core {r[f'{a}/{b}']['per_core']:.2f}"

  result = [
      bench.Row("decode_jpeg alone (bound)", cpu.bound, detail=detail("bound", f"{n} cores")),
      bench.Row("cpu pipeline -> uint8 batches", cpu.pipeline, "decode_jpeg alone", cpu.ratio,
          detail("jpeg", f"{vs('jpeg', 'bound')}; batch {batch_size}; epoch setup "
                         f"{setup * 1000:.0f} ms")),
      bench.Row(f"PIL loader ({n} processes)", p["pil"]["rate"], detail=detail(
          "pil", "open+decode into shared-memory batches, 2 in flight per worker")),
      bench.Row("cpu pipeline vs PIL loader", cpu.pipeline, "PIL loader", r["jpeg/pil"]["rate"],
          vs("jpeg", "pil")),
      *(_dataloader_rows(p, r, n) if "torch" in p else [bench.Row(
          f"PyTorch DataLoader ({n} workers)", float("nan"), detail="torch not installed")]),
      bench.Row("raw pipeline -> uint8 batches", p["raw"]["rate"], "cpu pipeline (JPEG)",
          r["raw/jpeg"]["rate"], detail("raw", vs("raw", "jpeg") + "; page cache")),
      bench.Row("raw pipeline, cold page cache", cpu.cold["rate"], "raw, page cache",
          cpu.cold["rate"] / p["raw"]["rate"],
          f"{cpu.cold['per_core']:.0f} img per CPU-s; one pass after posix_fadvise DONTNEED"),
      bench.Row("option decode_crop (224 window)", p["jpeg_decode_crop"]["rate"],
          "cpu pipeline (JPEG)", r["jpeg_decode_crop/jpeg"]["rate"],
          detail("jpeg_decode_crop", vs("jpeg_decode_crop", "jpeg"))),
      bench.Row("dct_method=INTEGER_ACCURATE", p["jpeg_integer_accurate"]["rate"],
          "cpu pipeline (JPEG)", r["jpeg_integer_accurate/jpeg"]["rate"],
          detail("jpeg_integer_accurate", vs("jpeg_integer_accurate", "jpeg") +
                 "; TF's default is INTEGER_FAST, PIL's is this")),
  ]
  for a, b, target in TARGETS:
    got = r[f"{a}/{b}"]
    met = "met" if min(got["rate"], got["per_core"]) >= target else "NOT met"
    result.append(bench.Row(f"target {a}/{b} >= {target:g}", float("nan"), detail=(
        f"images/s {got['rate']:.2f}, per core {got['per_core']:.2f}: {met}")))
  compiled = augment_rate(augment_batch_size, jit_compile=True)
  plain = augment_rate(augment_batch_size, jit_compile=False)
  crop_only = augment_rate(augment_batch_size, jit_compile=True, config=CROP_AND_MIRROR)
  map_fn = map_fn_crop_rate(augment_batch_size)
  result += [
      bench.Row("augment (XLA)", compiled, detail=f"batch {augment_batch_size}, per-pixel mean"),
      bench.Row("augment (no XLA)", plain, "augment (XLA)", plain / compiled),
      bench.Row("augment crop+mirror only (XLA)", crop_only),
      bench.Row("map_fn crop+mirror", map_fn, "augment crop+mirror (XLA)", map_fn / crop_only,
          "the per-image alternative"),
  ]
  return result


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as the command, so importing this module (tests, other entry
  points) never clashes with another entry point's flags of the same name."""
  flags.DEFINE_integer("num_images", 8192, "JPEG records written for the CPU pipeline figures "
                       f"(in shards of {RECORDS_PER_SHARD}, as ImageNet's 1,251).")
  flags.DEFINE_string("data_dir", None, "Measure the CPU pipeline on these training shards "
                      "(256x256, e.g. tfrecords.build's output) instead of generated ones. The "
                      "decode bound holds all their JPEGs in memory: use a subset for ImageNet.")
  flags.DEFINE_integer("batch_size", 128, "Batch size of the CPU pipeline.")
  flags.DEFINE_integer("augment_batch_size", 128, "Batch size of the augmentation.")
  flags.DEFINE_integer("repeats", 5, "Alternated rounds of the CPU passes (medians reported).")


def main(argv):
  del argv
  table = rows(FLAGS.num_images, FLAGS.batch_size, data_dir=FLAGS.data_dir,
               augment_batch_size=FLAGS.augment_batch_size, repeats=FLAGS.repeats)
  print(f"{'part':34s} {'images/s':>10s}  {'ratio':>6s}  vs / detail")
  for row in table:
    ratio = f"{row.ratio:6.2f}" if row.ratio is not None else " " * 6
    rate = f"{row.images_per_second:10.0f}" if row.images_per_second == row.images_per_second \
        else " " * 10
    print(f"{row.name:34s} {rate}  {ratio}  "
          f"{row.bound_name + ('; ' if row.bound_name and row.detail else '') + row.detail}")


def run():
  """The command (`python -m keras_alexnet.pipeline_benchmark`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
