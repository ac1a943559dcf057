"""Tiny real datasets for tests: 256x256 JPEG shards in the builder's format, with a
dataset_info.json, written with keras_alexnet.features and keras_alexnet.dataset_info.

The classes are learnable: class k's images have a bright square in a position and colour of
their own over noise, so a few SGD steps lower the loss.
"""

import io
import os

import numpy as np
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import features
from keras_alexnet import files

SIZE = 256
# (row, col, colour) of each class's square.
_PATTERNS = [((40, 40), (255, 40, 40)), ((150, 150), (40, 255, 40)),
             ((40, 150), (40, 40, 255)), ((150, 40), (255, 255, 40))]


def make_image(label: int, rng: np.random.Generator) -> np.ndarray:
  image = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
  (r, c), colour = _PATTERNS[label % len(_PATTERNS)]
  image[r:r + 70, c:c + 70] = colour
  return image


def write_dataset(data_dir: str, num_classes: int = 4, train: int = 32, validation: int = 16,
                  train_shards: int = 2, validation_shards: int = 1, seed: int = 0,
                  info: bool = True) -> str:
  """Writes train/validation shards (+ dataset_info.json) into data_dir; returns data_dir."""
  os.makedirs(data_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  classes = [[f"n{k:08d}", f"class {k}"] for k in range(num_classes)]
  total = np.zeros(3)
  for split, count, shards in (("train", train, train_shards),
                               ("validation", validation, validation_shards)):
    writers = [tf.io.TFRecordWriter(os.path.join(data_dir, features.shard_name(split, i, shards)))
               for i in range(shards)]
    for i in range(count):
      label = i % num_classes
      image = make_image(label, rng)
      if split == "train":
        total += image.reshape(-1, 3).mean(0)
      encoded = tf.io.encode_jpeg(image, quality=95).numpy()
      writers[i % shards].write(features.make_example(
          encoded, label=label, synset=classes[label][0], text=classes[label][1],
          filename=f"{split}_{i}.JPEG", height=SIZE, width=SIZE))
    for w in writers:
      w.close()
  if info:
    files.write_json(os.path.join(data_dir, dataset_info.FILENAME), {
        "format": "keras_alexnet", "label_offset": 0, "image_size": SIZE,
        "num_classes": num_classes, "classes": classes,
        "splits": {"train": {"num_examples": train, "num_shards": train_shards},
                   "validation": {"num_examples": validation, "num_shards": validation_shards}},
        "mean_rgb": (total / max(train, 1)).tolist(),
    })
  return data_dir


def read_events(logdir: str) -> dict:
  """{tag: {step: value}} of the TensorBoard event files under logdir (later files win).

  Image summaries map to their encoded bytes.
  """
  found = {}
  paths = sorted(tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")),
                 key=os.path.getmtime)
  for path in paths:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
  return found


def make_workdir(workdir: str, data_dir: str, seed: int = 0) -> str:
  """A training workdir as train leaves it (config.json, statistics.npz, one checkpoint) for
  the --tiny_model net with weights drawn from `seed`, over the classes of data_dir."""
  import keras   # pylint: disable=g-import-not-at-top
  from keras_alexnet import workdir as workdir_lib   # pylint: disable=g-import-not-at-top
  from keras_alexnet import model as model_lib   # pylint: disable=g-import-not-at-top
  info = dataset_info.read(data_dir)
  config = model_lib.ModelConfig(num_classes=info["num_classes"], dropout=0.0)
  keras.utils.set_random_seed(seed)
  model = workdir_lib.build_model(config, tiny=True)
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), {
      "model_config": workdir_lib.model_config_to_json(config), "tiny_model": True,
      "num_classes": config.num_classes, "classes": info["classes"], "data_dir": data_dir,
      "data": {"label_offset": 0}, "augment": {"mean": "per_pixel"}})
  workdir_lib.save_statistics(workdir, dataset_info.statistics_from_dataset_info(data_dir))
  workdir_lib.CheckpointStore(workdir).save(
      tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(model)), 1, {"step": 1})
  return workdir


_STRATEGIES = iter(range(1, 1_000_000))


def unique_collective_keys(monkeypatch) -> None:
  """Gives the next tf.distribute.MirroredStrategy of this process collective keys of its own.

  Every MirroredStrategy starts its collective group keys at 1 + _collective_key_base (0), so
  a second strategy in the same process (another test) collides with the first ("Shape
  mismatch in the collective instance"). TF's own tests set the base; so do these.
  """
  monkeypatch.setattr(tf.distribute.MirroredStrategy, "_collective_key_base",
                      100_000 * next(_STRATEGIES))


def encode(array: np.ndarray, fmt: str, mode: str = None) -> bytes:
  """Real file bytes of `array` in Pillow format `fmt` (JPEG, PNG, ...), converted to `mode`
  first if given (e.g. "CMYK" or "L" for ImageNet's odd JPEGs)."""
  from PIL import Image
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt)
  return buffer.getvalue()


def photo(height: int, width: int, seed: int) -> np.ndarray:
  """A smooth random uint8 RGB image (noise upsampled), so JPEG treats it like a photo."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**extra: str) -> dict:
  """The environment for a child process (a command under test) that must import this
  checkout's keras_alexnet and tfrecords, installed or not: quiet TF, no GPU, no inherited
  TF_CONFIG, unbuffered output; `extra` added last."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
         "PYTHONUNBUFFERED": "1",
         "PYTHONPATH": os.pathsep.join([REPO] + os.environ.get("PYTHONPATH", "").split(
             os.pathsep)).rstrip(os.pathsep)}
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def bomb_png(width: int, height: int) -> bytes:
  """A real RGB PNG of width x height black pixels, compressed row by row: a decompression
  bomb (20000x20000 is 1.2 GB of pixels in about 1 MB) made without holding its pixels."""
  import struct
  import zlib

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  compressor = zlib.compressobj(9)
  row = bytes(1 + 3 * width)   # filter byte 0, then the row's pixels
  parts = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
          + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def peak_rss_kb(args, **popen_kwargs) -> tuple:
  """(return code, output, peak resident memory in kB) of the command `args`, measured by a
  small wrapper process whose only child it is (RUSAGE_CHILDREN of this process would also
  count earlier children, and a child's RSS before exec)."""
  import subprocess
  import sys
  wrapper = ("import resource, subprocess, sys\n"
             "code = subprocess.call(sys.argv[1:])\n"
             "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
             "sys.exit(code)\n")
  result = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True,
                          text=True, **popen_kwargs)
  out = result.stdout + result.stderr
  peak = int(out.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
  return result.returncode, out, peak
