"""Top-5 classes for image files from an exported SavedModel (keras_alexnet.export).

    python -m keras_alexnet.predict --saved_model=BASE/1 IMAGE_OR_FOLDER... [--json]
    python -m keras_alexnet.predict --saved_model=BASE/1 --benchmark=1,64   # latency, images/s

Folders are searched recursively for .jpg/.jpeg/.png files. The images go through the
SavedModel's serving_default signature, i.e. the same in-graph preprocessing TF Serving runs.
A file that cannot be read or decoded is reported on its own line (stderr in table mode, an
"error" entry in JSON) while the others are still answered; the exit code is then 1.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_alexnet import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"
EXIT_FAILED_IMAGES = 1
EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One image's answer: top-5 rows (class index, wnid, name, probability), or an error."""
  path: str
  top5: Tuple[Tuple[int, str, str, float], ...] = ()
  error: Optional[str] = None

  def to_json(self) -> dict:
    if self.error is not None:
      return {"file": self.path, "error": self.error}
    return {"file": self.path,
            "top5": [{"class": c, "wnid": w, "name": n, "probability": p}
                     for c, w, n, p in self.top5]}


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """What the predict command needs (built from its flags)."""
  saved_model: str
  paths: Tuple[str, ...]
  batch_size: int = 32
  json: bool = False


def resolve_saved_model(path: str) -> str:
  """`path` if it holds a SavedModel, else its highest numbered version folder (a TF Serving
  base folder); FileNotFoundError naming what was looked for otherwise."""
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    return path
  if os.path.isdir(path):
    numbered = sorted((int(n) for n in os.listdir(path)
                       if n.isdigit() and os.path.isfile(
                           os.path.join(path, n, "saved_model.pb"))), reverse=True)
    if numbered:
      return os.path.join(path, str(numbered[0]))
  raise FileNotFoundError(
      f"No SavedModel at {path!r}: expected a folder with saved_model.pb (BASE/<version>) or "
      "a base folder of numbered versions, as written by python -m keras_alexnet.export.")


def load(saved_model: str):
  """The loaded SavedModel; use .signatures["serving_default"], and keep the loaded object
  alive as long as the signature is used (it owns the variables)."""
  loaded = tf.saved_model.load(resolve_saved_model(saved_model))
  if SIGNATURE not in loaded.signatures:
    raise ValueError(f"{saved_model} has no {SIGNATURE!r} signature (it has "
                     f"{sorted(loaded.signatures)}); was it written by keras_alexnet.export?")
  return loaded


def image_files(paths: Sequence[str]) -> List[str]:
  """Files named on the command line as given (whatever their extension), and the image
  files in named folders, recursively, sorted. Paths that do not exist are kept so that they
  are reported with the other failures."""
  files = []
  for path in paths:
    if not os.path.isdir(path):
      files.append(path)
      continue
    found = []
    for root, dirs, names in os.walk(path):
      dirs.sort()
      found += [os.path.join(root, n) for n in names
                if n.lower().endswith(IMAGE_EXTENSIONS)]
    files += sorted(found)
  return files


def predict_files(signature: Callable[..., dict], files: Sequence[str],
                  batch_size: int = 32) -> List[Prediction]:
  """Runs the files through `signature` in batches; one Prediction per file, in order.

  A batch the model refuses (a file that is no image) is retried image by image, so one bad
  file costs its neighbours nothing but time.
  """
  if batch_size < 1:
    raise errors.invalid("batch_size", batch_size, ">= 1")
  results = {}
  for start in range(0, len(files), batch_size):  # Read per batch: folders can be large.
    batch = []
    for path in files[start:start + batch_size]:
      try:
        with open(path, "rb") as f:
          batch.append((path, f.read()))
      except OSError as e:
        results[path] = Prediction(path, error=f"cannot read: {e.strerror or e}")
    if not batch:
      continue
    try:
      results.update(_run(signature, batch))
    except tf.errors.InvalidArgumentError:
      for path, data in batch:
        try:
          results.update(_run(signature, [(path, data)]))
        except tf.errors.InvalidArgumentError as e:
          results[path] = Prediction(path, error=f"cannot decode: {_first_line(e.message)}")
  return [results[path] for path in files]


def _run(signature, batch):
  outputs = signature(**{BYTES_INPUT: tf.constant([data for _, data in batch])})
  classes = outputs["top5_classes"].numpy()
  wnids = outputs["top5_wnids"].numpy()
  names = outputs["top5_names"].numpy()
  probabilities = outputs["top5_probabilities"].numpy()
  return {path: Prediction(path, tuple(
      (int(c), w.decode(), n.decode(), float(p))
      for c, w, n, p in zip(classes[i], wnids[i], names[i], probabilities[i])))
          for i, (path, _) in enumerate(batch)}


def _first_line(message: str) -> str:
  """The op's own message, without the graph-execution trace TF appends."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  meaningful = [line for line in lines if not line.startswith(
      ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[",
       "Traceback"))]
  return (meaningful or lines or ["unknown error"])[0]


def format_table(predictions: Sequence[Prediction]) -> str:
  """The answered images as a table per image (errors are left to the caller)."""
  blocks = []
  for p in predictions:
    if p.error is not None:
      continue
    wnid_width = max([len("wnid")] + [len(w) for _, w, _, _ in p.top5])
    rows = [p.path, f"  rank  probability  {'wnid':<{wnid_width}}  name"]
    rows += [f"  {rank:>4}  {prob:>11.4f}  {wnid:<{wnid_width}}  {name}"
             for rank, (_, wnid, name, prob) in enumerate(p.top5, 1)]
    blocks.append("\n".join(rows))
  return "\n\n".join(blocks)


def predict_and_print(config: PredictConfig) -> int:
  """Prints the predictions; returns the exit code (1 if any image failed)."""
  loaded = load(config.saved_model)
  predictions = predict_files(loaded.signatures[SIGNATURE], image_files(config.paths),
                              config.batch_size)
  if not predictions:
    print(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {list(config.paths)}.",
          file=sys.stderr)
    return EXIT_FAILED_IMAGES
  if config.json:
    print(json.dumps([p.to_json() for p in predictions], indent=2))
  else:
    table = format_table(predictions)
    if table:
      print(table)
    for p in predictions:
      if p.error is not None:
        print(f"{p.path}: {p.error}", file=sys.stderr)
  return EXIT_FAILED_IMAGES if any(p.error for p in predictions) else 0


def benchmark(loaded, batch_sizes: Sequence[int], repeats: int = 10) -> List[dict]:
  """Median latency of the two signatures per batch size, after one untimed warm-up call.

  serving_default gets distinct 500x375 JPEGs (the typical ImageNet photo), so the figures
  include decoding and resizing; `preprocessed` gets ready crops: the model alone.
  """
  rng = np.random.default_rng(0)

  def jpeg():
    y, x = np.mgrid[0:375, 0:500]
    image = np.stack([x * 255 // 500, y * 255 // 375, (x + y) * 255 // 875], axis=-1)
    image = image + rng.integers(0, 40, image.shape)
    return tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()

  images = [jpeg() for _ in range(max(batch_sizes))]
  crops = rng.normal(0, 60, (max(batch_sizes), 224, 224, 3)).astype(np.float32)
  rows = []
  for batch in batch_sizes:
    for name, kwargs in ((SIGNATURE, {BYTES_INPUT: tf.constant(images[:batch])}),
                         ("preprocessed", {"images": tf.constant(crops[:batch])})):
      signature = loaded.signatures[name]
      signature(**kwargs)["probabilities"].numpy()
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        signature(**kwargs)["probabilities"].numpy()
        times.append(time.perf_counter() - start)
      median = float(np.median(times))
      rows.append({"signature": name, "batch_size": batch, "median_ms": 1000 * median,
                   "images_per_second": batch / median, "repeats": repeats})
  return rows


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.benchmark:
    rows = benchmark(load(f.saved_model), [int(b) for b in f.benchmark], f.repeats)
    model_alone = {r["batch_size"]: r["median_ms"] for r in rows
                   if r["signature"] == "preprocessed"}
    print(f"{'signature':<16} {'batch':>5} {'median ms':>10} {'images/s':>9} "
          f"{'/ model alone':>13}")
    for r in rows:
      print(f"{r['signature']:<16} {r['batch_size']:>5} {r['median_ms']:>10.1f} "
            f"{r['images_per_second']:>9.1f} "
            f"{r['median_ms'] / model_alone[r['batch_size']]:>13.2f}")
    return 0
  if len(argv) < 2:
    print("Usage: python -m keras_alexnet.predict --saved_model=BASE/1 IMAGE_OR_FOLDER...",
          file=sys.stderr)
    return EXIT_USAGE
  config = PredictConfig(saved_model=f.saved_model, paths=tuple(argv[1:]),
                         batch_size=f.batch_size, json=f.json)
  try:
    return predict_and_print(config)
  except (FileNotFoundError, ValueError) as e:
    print(f"predict: {e}", file=sys.stderr)
    return EXIT_USAGE


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("saved_model", None, "An exported version folder (BASE/<version>), or "
                      "the base folder (its highest version is used).")
  flags.DEFINE_integer("batch_size", 32, "Images per call to the model.", lower_bound=1)
  flags.DEFINE_boolean("json", False, "Print JSON (one entry per image) instead of a table.")
  flags.DEFINE_list("benchmark", [], "Instead of predicting: time the signatures at these "
                    "batch sizes (e.g. 1,64) and print the median latency and images/s.")
  flags.DEFINE_integer("repeats", 10, "Timed calls per batch size with --benchmark.",
                       lower_bound=1)
  flags.mark_flag_as_required("saved_model")


def run():
  """The command (`python -m keras_alexnet.predict`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, _define_flags)


if __name__ == "__main__":
  run()
