r"""Builder throughput against the bare image work of one core, measured in the same run.

  python -m tfrecords.benchmark [--images=600] [--repeats=3] [--num_workers=0]

Generates full-size photo-like JPEGs (ImageNet's average is about 400x350), then measures, as
medians over --repeats:
  bare     image.convert (decode + RGB + resize/crop to 256 + JPEG encode) in a loop on one
           core, bytes already in memory: the work that cannot be avoided;
  1 worker the whole builder (listing, reading, converting, statistics, records, shards,
           dataset_info) with --num_workers=1;
  N workers the same with all cores.
and prints images/s and, per worker, the ratio to the bare rate (target >= 0.8).
"""

import io
import os
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from . import build
from . import image

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as the command (see keras_alexnet.benchmark.define_flags)."""
  flags.DEFINE_integer("images", 600, "Generated images.")
  flags.DEFINE_integer("repeats", 3, "Timed runs of each measurement (the median is printed).")
  flags.DEFINE_integer("num_workers", 0, "Workers of the parallel build; 0: one per core.")
  flags.DEFINE_integer("seed", 0, "Seed of the generated images.")

# ImageNet-2012 training images average about 400x350 (sizes spread around it).
MEAN_SIZE = (400, 350)
SOURCE_QUALITY = 90
SHARDS_PER_WORKER = 2   # few, long shards, like ImageNet's ~1250 images each


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """A smooth random picture with grain: compresses and decodes like a photo, not like noise."""
  low = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.int16)
  grain = rng.normal(0, 6, smooth.shape)
  return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_images(root: str, count: int, seed: int) -> list[bytes]:
  """count JPEGs in root/train/<class>/ (4 classes); returns their bytes."""
  rng = np.random.default_rng(seed)
  encoded = []
  for i in range(count):
    width = int(rng.integers(MEAN_SIZE[0] * 3 // 4, MEAN_SIZE[0] * 5 // 4 + 1))
    height = int(rng.integers(MEAN_SIZE[1] * 3 // 4, MEAN_SIZE[1] * 5 // 4 + 1))
    buffer = io.BytesIO()
    photo(rng, width, height).save(buffer, "JPEG", quality=SOURCE_QUALITY)
    folder = os.path.join(root, "train", f"class{i % 4}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
      f.write(buffer.getvalue())
    encoded.append(buffer.getvalue())
  return encoded


def bare_rate(encoded: list[bytes]) -> tuple[float, float]:
  """(images per wall second, images per CPU second) of image.convert alone."""
  wall, cpu = time.perf_counter(), time.process_time()
  for data in encoded:
    image.convert(data, build.DEFAULT_IMAGE_SIZE, build.DEFAULT_JPEG_QUALITY)
  return (len(encoded) / (time.perf_counter() - wall),
          len(encoded) / (time.process_time() - cpu))


def build_rate(source: str, output: str, workers: int, shards: int,
               count: int) -> tuple[float, float]:
  """(images per wall second, per CPU second of this process) of a whole build.

  With one worker the build runs in this process, so its CPU rate is the builder's own cost
  per image, whatever else the machine runs; with more, the workers' CPU is not counted.
  """
  config = build.BuildConfig(input=source, output_dir=output, num_workers=workers,
                             train_shards=shards, overwrite=True, progress=False)
  wall, cpu = time.perf_counter(), time.process_time()
  build.build(config)
  rates = count / (time.perf_counter() - wall), count / (time.process_time() - cpu)
  for name in os.listdir(output):   # the next run must do all the work again
    path = os.path.join(output, name)
    if os.path.isfile(path):
      os.remove(path)
  return rates


def main(argv) -> None:
  del argv
  workers = build.num_workers(FLAGS.num_workers)
  with tempfile.TemporaryDirectory(prefix="tfrecords-benchmark-") as root:
    source = os.path.join(root, "input")
    encoded = write_images(source, FLAGS.images, FLAGS.seed)
    sizes = [Image.open(io.BytesIO(e)).size for e in encoded]
    width, height = np.mean(sizes, axis=0)
    kilobytes = np.mean([len(e) for e in encoded]) / 1e3
    print(f"{len(encoded)} generated JPEGs, mean {width:.0f}x{height:.0f}, {kilobytes:.0f} kB "
          f"(quality {SOURCE_QUALITY}); {workers} workers; medians of {FLAGS.repeats} runs")
    output = os.path.join(root, "output")
    shards = SHARDS_PER_WORKER * workers
    # Warm-up: page cache, TF import, the worker server (started once, reused by every build).
    build_rate(source, output, workers, shards, len(encoded))
    bare, one, many = [], [], []
    for _ in range(FLAGS.repeats):   # interleaved, so load changes hit all three alike
      bare.append(bare_rate(encoded))
      one.append(build_rate(source, output, 1, shards, len(encoded)))
      many.append(build_rate(source, output, workers, shards, len(encoded)))
    (bare, bare_cpu), (one, one_cpu), (many, _) = (
        np.median(runs, axis=0) for runs in (bare, one, many))
    print(f"bare decode+resize+encode, one core: {bare:8.1f} images/s "
          f"({bare_cpu:.1f} per CPU second)")
    print(f"builder, 1 worker:                   {one:8.1f} images/s = {one / bare:.2f} of bare "
          f"({one_cpu:.1f} per CPU second = {one_cpu / bare_cpu:.2f} of bare)")
    print(f"builder, {workers} workers:".ljust(37) + f"{many:8.1f} images/s = "
          f"{many / workers / bare:.2f} of bare per worker; {many / one:.2f}x one worker")


def run():
  """The command (`python -m tfrecords.benchmark`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
