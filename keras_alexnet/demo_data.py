"""The demo's dataset: procedurally drawn shapes in the layout ImageNet ships (ILSVRC extracted).

    DIR/train/n00000001/n00000001_00001.JPEG ...   one folder of JPEGs per class (a wnid-like id)
    DIR/val/ILSVRC2012_val_00000001.JPEG ...        flat, as ILSVRC-2012's validation folder
    DIR/val_labels.txt                              'filename wnid' per validation image
    DIR/classes.txt                                 'wnid<TAB>name' per class
    DIR/heldout/*.JPEG                              in neither split: for the predict step
    DIR/demo_data.json                              written last: the dataset is complete

Each class is a shape (disc, square, triangle, star, ring, cross) in its own band of hues (red,
yellow, green, cyan, blue, magenta), drawn at a random position, scale and rotation, with a
random shade and fill texture, over a random greyish background (gradient, stripes, checks or
noise). Shape and colour both tell the classes apart: with shape alone (random colours, the
first version) the paper's net did not get off chance within the demo's few hundred steps.
Images are 256x256 and larger, with different aspect ratios. Like ImageNet, a few files are odd:
a CMYK JPEG and a PNG named .JPEG among the training images, a grayscale JPEG in validation.

Deterministic: every image is drawn from its own seed (the dataset seed, its split and index),
so the same config gives byte-identical files (with the same Pillow / libjpeg). A dataset is
written in a temporary folder beside DIR and renamed into place when complete, so DIR either
holds a whole dataset or does not exist.
"""

import dataclasses
import io
import json
import math
import multiprocessing
import os
import shutil
from typing import Callable, Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw

GENERATOR = "keras_alexnet.demo_data/2"   # bump when the bytes drawn for a config change
MANIFEST = "demo_data.json"
CLASSES_FILE = "classes.txt"
VALIDATION_LABELS_FILE = "val_labels.txt"
HELDOUT = "heldout"
# (wnid-like id, human name), in label order; the ids match the builder's n\d{8} wnid pattern.
CLASSES = (("n00000001", "disc"), ("n00000002", "square"), ("n00000003", "triangle"),
           ("n00000004", "star"), ("n00000005", "ring"), ("n00000006", "cross"))
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:0"     # stated, so the bytes do not follow Pillow's default
SUPERSAMPLE = 2                # shape masks are drawn at 2x and downsampled: smooth edges
RADIUS = (0.25, 0.45)          # shape circumradius, as a fraction of the image's shorter side
MIN_CONTRAST = 70              # shape vs background, mean luminance difference (0..255)
# Each class paints its shape in its own hue band (degrees, +-HUE_JITTER), over backgrounds
# of low saturation: the classes differ in shape and colour, as the issue asks for, so that
# the paper's net gets off chance within the demo's budget (version 1 drew every colour for
# every class: shape alone, and AlexNet from scratch stayed at chance; BUILD_NOTES, "Demo").
CLASS_HUES = (0, 60, 120, 180, 240, 300)   # red, yellow, green, cyan, blue, magenta
HUE_JITTER = 15
BACKGROUND_SATURATION = 0.25   # backgrounds are mixed this far from grey towards a colour
_SPLIT_CODES = {"train": 0, "validation": 1, "heldout": 2, "order": 3}
_TMP_PREFIX = ".tmp-"


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
  """How much to draw; the output is a function of these fields alone."""
  train_per_class: int = 200
  validation_per_class: int = 40
  heldout_per_class: int = 1
  num_classes: int = len(CLASSES)
  min_size: int = 256          # image sides are drawn from [min_size, max_size]
  max_size: int = 352
  seed: int = 0


def check_config(config: DemoDataConfig) -> None:
  """Raises ValueError naming the first bad field and what is allowed."""
  if not 2 <= config.num_classes <= len(CLASSES):
    raise ValueError(f"num_classes must be in 2..{len(CLASSES)}; received {config.num_classes}")
  # The odd files take the first images of the splits; one normal image per class besides.
  if config.train_per_class < 2:
    raise ValueError(f"train_per_class must be >= 2; received {config.train_per_class}")
  if config.validation_per_class < 1:
    raise ValueError(f"validation_per_class must be >= 1; received "
                     f"{config.validation_per_class}")
  if config.heldout_per_class < 0:
    raise ValueError(f"heldout_per_class must be >= 0; received {config.heldout_per_class}")
  if not 64 <= config.min_size <= config.max_size:
    raise ValueError(f"image sides must satisfy 64 <= min_size <= max_size; received "
                     f"min_size={config.min_size}, max_size={config.max_size}")


# ---------------------------------------------------------------------------------------------
# Drawing.


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  # SeedSequence of a list of ints: the same stream on every platform and numpy version.
  return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _colour(rng) -> np.ndarray:
  return rng.integers(0, 256, 3).astype(np.float32)


def _class_colour(rng, label) -> np.ndarray:
  """A saturated colour in class `label`'s hue band."""
  hue = (CLASS_HUES[label] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360 / 60
  saturation, value = rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)
  # HSV -> RGB: the distance of each channel's hue from the hue, in sextants.
  k = (np.array([5.0, 3.0, 1.0]) + hue) % 6
  rgb = value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)
  return (255 * rgb).astype(np.float32)


def _luminance(rgb) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _greyish(rgb) -> np.ndarray:
  grey = _luminance(rgb)
  return (grey + BACKGROUND_SATURATION * (rgb - grey)).astype(np.float32)


def _coordinates(rng, width, height):
  """Pixel coordinates projected on a random direction, scaled to about 0..1."""
  angle = rng.uniform(0, math.pi)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  t = x * math.cos(angle) + y * math.sin(angle)
  return (t - t.min()) / max(float(t.max() - t.min()), 1.0)


def _background(rng, width, height) -> np.ndarray:
  """float32 [height, width, 3]: a gradient, stripes, checks or blotchy noise."""
  kind = rng.integers(4)
  a, b = (_greyish(_colour(rng)) for _ in range(2))
  if kind == 0:
    t = _coordinates(rng, width, height)[..., None]
  elif kind == 1:
    period = rng.uniform(12, 48)
    t = (np.sin(_coordinates(rng, width, height) * max(width, height) * 2 * math.pi / period)
         > 0)[..., None] * 1.0
  elif kind == 2:
    cell = int(rng.integers(16, 48))
    y, x = np.mgrid[0:height, 0:width]
    t = (((x // cell) + (y // cell)) % 2)[..., None] * 1.0
  else:
    coarse = rng.uniform(0, 1, (height // 32 + 2, width // 32 + 2)).astype(np.float32)
    t = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    t = np.clip(t, 0, 1)[..., None]
  image = a * (1 - t) + b * t
  return image + rng.normal(0, 6, image.shape).astype(np.float32)


def _polygon(kind: str, cx, cy, r, angle) -> list:
  """Vertices of a polygonal shape of circumradius r centred at (cx, cy)."""
  if kind == "square":
    points = [(r, a) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
  elif kind == "triangle":
    points = [(r, a) for a in np.arange(3) * 2 * math.pi / 3]
  elif kind == "star":
    points = [(r if i % 2 == 0 else 0.42 * r, i * math.pi / 5) for i in range(10)]
  elif kind == "cross":
    # A plus sign: arms 0.36 r wide reaching r from the centre.
    w = 0.18 * r
    corners = [(w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r), (w, -r),
               (w, -w), (r, -w), (r, w), (w, w)]
    points = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
  else:
    raise ValueError(f"not a polygonal shape: {kind!r}")
  return [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for d, a in points]


def _mask(kind: str, width, height, cx, cy, r, angle) -> np.ndarray:
  """float32 [height, width] coverage of the shape, antialiased by supersampling."""
  s = SUPERSAMPLE
  canvas = Image.new("L", (width * s, height * s), 0)
  draw = ImageDraw.Draw(canvas)
  cx, cy, r = cx * s, cy * s, r * s
  if kind in ("disc", "ring"):
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    if kind == "ring":
      inner = 0.6 * r
      draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
  else:
    draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
  small = canvas.resize((width, height), Image.Resampling.BOX)
  return np.asarray(small, np.float32) / 255


def _fill(rng, width, height, colour) -> np.ndarray:
  """The shape's paint: solid, striped or speckled in shades of `colour`."""
  kind = rng.integers(3)
  other = np.clip(colour + rng.choice([-1, 1]) * rng.uniform(40, 90), 0, 255)
  if kind == 0:
    return np.broadcast_to(colour, (height, width, 3))
  if kind == 1:
    period = rng.uniform(6, 20)
    t = (np.sin(_coordinates(rng, width, height) * max(width, height) * 2 * math.pi / period)
         > 0)[..., None]
    return np.where(t, colour, other).astype(np.float32)
  t = rng.uniform(0, 1, (height, width, 1)) < 0.3
  return np.where(t, other, colour).astype(np.float32)


def draw(label: int, rng: np.random.Generator, min_size: int = 256,
         max_size: int = 352) -> Image.Image:
  """One RGB image of class `label` (an index into CLASSES), drawn from `rng`."""
  kind = CLASSES[label][1]
  width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
  background = _background(rng, width, height)
  side = min(width, height)
  r = rng.uniform(*RADIUS) * side
  # Inside the central square: what the builder keeps after its centre crop (section 2).
  x0, y0 = (width - side) / 2, (height - side) / 2
  cx, cy = x0 + rng.uniform(r, side - r), y0 + rng.uniform(r, side - r)
  angle = rng.uniform(0, 2 * math.pi)
  mask = _mask(kind, width, height, cx, cy, r, angle)
  behind = _luminance(background[mask > 0.5].mean(axis=0)) if (mask > 0.5).any() else 128.0
  for _ in range(20):   # a colour that stands out from what lies behind the shape
    colour = _class_colour(rng, label)
    if abs(_luminance(colour) - behind) >= MIN_CONTRAST:
      break
  # else: the last draw; its hue still stands out from the greyish background.
  paint = _fill(rng, width, height, colour)
  image = background * (1 - mask[..., None]) + paint * mask[..., None]
  return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, kind: str = "rgb") -> bytes:
  """File bytes: kind 'rgb' | 'cmyk' | 'grayscale' (JPEGs) or 'png' (named .JPEG anyway)."""
  buffer = io.BytesIO()
  if kind == "png":
    image.save(buffer, "PNG")
  else:
    mode = {"rgb": "RGB", "cmyk": "CMYK", "grayscale": "L"}[kind]
    image.convert(mode).save(buffer, "JPEG", quality=JPEG_QUALITY,
                             subsampling=JPEG_SUBSAMPLING)
  return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The dataset.


def plan(config: DemoDataConfig) -> list:
  """Every file of the dataset: (split, index, relative path, label, kind), in drawing order.

  The odd files, as ImageNet has them: the first training image of class 0 is a CMYK JPEG, of
  class 1 a PNG named .JPEG; the first validation image is a grayscale JPEG.
  """
  check_config(config)
  files = []
  for label in range(config.num_classes):
    wnid = CLASSES[label][0]
    for i in range(config.train_per_class):
      kind = {(0, 0): "cmyk", (1, 0): "png"}.get((label, i), "rgb")
      files.append(("train", label * config.train_per_class + i,
                    f"train/{wnid}/{wnid}_{i + 1:05d}.JPEG", label, kind))
  labels = np.repeat(np.arange(config.num_classes), config.validation_per_class)
  _rng(config.seed, "order", 0).shuffle(labels)   # classes mixed, as in ILSVRC's val folder
  for i, label in enumerate(labels):
    files.append(("validation", i, f"val/ILSVRC2012_val_{i + 1:08d}.JPEG", int(label),
                  "grayscale" if i == 0 else "rgb"))
  for label in range(config.num_classes):
    for i in range(config.heldout_per_class):
      name = CLASSES[label][1].replace(" ", "_")
      files.append(("heldout", label * config.heldout_per_class + i,
                    f"{HELDOUT}/{name}_{i + 1}.JPEG", label, "rgb"))
  return files


def read_manifest(output_dir: str) -> Optional[dict]:
  """The manifest of a complete dataset in output_dir, or None (missing or unreadable)."""
  try:
    with open(os.path.join(output_dir, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  return manifest if isinstance(manifest, dict) else None


def _manifest(config: DemoDataConfig, files: list) -> dict:
  counts = {}
  for split, *_ in files:
    counts[split] = counts.get(split, 0) + 1
  return {
      "generator": GENERATOR,
      "config": dataclasses.asdict(config),
      "classes": [list(c) for c in CLASSES[:config.num_classes]],
      "num_files": counts,
      "odd_files": {path: kind for _, _, path, _, kind in files if kind != "rgb"},
      "classes_file": CLASSES_FILE,
      "validation_labels_file": VALIDATION_LABELS_FILE,
      "heldout": {path: CLASSES[label][0] for split, _, path, label, _ in files
                  if split == "heldout"},
  }


def is_complete(output_dir: str, config: DemoDataConfig) -> bool:
  """Whether output_dir holds the finished dataset of exactly this config and generator."""
  manifest = read_manifest(output_dir)
  return (manifest is not None and manifest.get("generator") == GENERATOR
          and manifest.get("config") == dataclasses.asdict(config))


def _write(job) -> None:
  tmp, config, (split, index, path, label, kind) = job
  image = draw(label, _rng(config.seed, split, index), config.min_size, config.max_size)
  with open(os.path.join(tmp, path), "wb") as f:
    f.write(encode(image, kind))


def generate(output_dir: str, config: DemoDataConfig = DemoDataConfig(),
             progress: Optional[Callable[[int, int], None]] = None,
             num_workers: int = 0) -> dict:
  """Writes the dataset of `config` as output_dir (or finds it there, complete); its manifest.

  Args:
    output_dir: the dataset folder. It must not exist, or hold this very dataset (then
      nothing is drawn).
    config: what to draw.
    progress: called as progress(files done, files in all) every few dozen files.
    num_workers: processes drawing images; 0: one per core.

  Raises:
    ValueError: a bad config, or output_dir exists and is not this dataset (nothing touched).
  """
  files = plan(config)
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir):
    if is_complete(output_dir, config):
      return read_manifest(output_dir)
    raise ValueError(f"{output_dir} exists and is not the complete demo dataset of this config "
                     f"(its {MANIFEST} is missing or differs). Remove it, or choose another "
                     "folder; nothing was changed.")
  parent, name = os.path.split(output_dir)
  os.makedirs(parent, exist_ok=True)
  # A temporary folder left by a killed run of this function is ours to remove.
  for stale in os.listdir(parent):
    if stale.startswith(f"{_TMP_PREFIX}{name}-"):
      shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
  tmp = os.path.join(parent, f"{_TMP_PREFIX}{name}-{os.getpid()}")
  os.makedirs(tmp)
  try:
    for folder in sorted({os.path.dirname(path) for _, _, path, _, _ in files}):
      os.makedirs(os.path.join(tmp, folder), exist_ok=True)
    jobs = [(tmp, config, file) for file in files]
    workers = min(num_workers, len(files)) if num_workers else len(os.sched_getaffinity(0))
    # Each image depends only on its own seed, so the order of drawing does not matter.
    # forkserver: the caller may have imported TF, which does not survive a fork.
    pool = (multiprocessing.get_context("forkserver").Pool(workers) if workers > 1
            else None)
    try:
      for done, _ in enumerate(pool.imap_unordered(_write, jobs, chunksize=8) if pool
                               else map(_write, jobs)):
        if progress and (done % 50 == 49 or done + 1 == len(files)):
          progress(done + 1, len(files))
    finally:
      if pool is not None:
        pool.terminate()
        pool.join()
    classes = CLASSES[:config.num_classes]
    with open(os.path.join(tmp, CLASSES_FILE), "w") as f:
      f.write("".join(f"{wnid}\t{text}\n" for wnid, text in classes))
    with open(os.path.join(tmp, VALIDATION_LABELS_FILE), "w") as f:
      f.write("".join(f"{os.path.basename(path)} {classes[label][0]}\n"
                      for split, _, path, label, _ in files if split == "validation"))
    manifest = _manifest(config, files)
    with open(os.path.join(tmp, MANIFEST), "w") as f:   # last: the dataset is complete
      json.dump(manifest, f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, output_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest
