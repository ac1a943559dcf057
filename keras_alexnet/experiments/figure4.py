"""Figure 4 of the paper (section 6.1): what a trained net predicts and what it finds similar.

  python -m keras_alexnet.experiments.figure4 --workdir=RUN --data_dir=SHARDS --output_dir=OUT \
      [--split=validation|test] [--num_images=8] [--num_queries=0] [--neighbours=6]

Writes into OUT:
  figure4_left.png   --num_images images of the split, each with the model's five most
                     probable labels as bars (centre crop), the correct label's bar in red and
                     its name under the image ("the correct label is written under each image").
  figure4_right.png  the first --draw_queries query images (first column) and the
                     --neighbours training images whose fc7 vectors ("the feature activations
                     induced at the last, 4096-dimensional hidden layer") are nearest to theirs
                     in Euclidean distance.
  figure4.json       {"queries": [{"file", "label", "neighbours": [{"file", "label",
                     "distance"}]}], "predictions": [{"file", "label", "top5": [...]}], ...}
                     for every query (--num_queries, 0: every image of the split).

The search is exact and chunked: the training split is read once, --chunk_size images at a
time, their fc7 vectors computed (keras_alexnet.extract, the same functions as the extract
command) and compared with every query's, keeping each query's k best so far. Memory is the
queries' vectors plus one chunk, whatever the training split's size (ILSVRC-2012's 1.28 M x
4096 float32 would be 21 GB). Candidates are ranked by ||q||^2 + ||t||^2 - 2 q.t (one matmul
per chunk) and the distances reported are recomputed as ||q - t|| in float64, so an image and
its copy are at distance 0 up to the forward pass's own rounding.
"""

import os
import sys
from typing import List, Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from keras_alexnet import cli
from keras_alexnet import dataset_info
from keras_alexnet import errors
from keras_alexnet import experiments
from keras_alexnet import extract
from keras_alexnet import files

FEATURE_LAYER = "fc7"   # Section 6.1: "the last, 4096-dimensional hidden layer"
DPI = 100
# Inches per panel cell; the PNGs are exactly these x DPI pixels (no tight bounding box).
LEFT_CELL = (3.0, 4.2)      # an image and its five bars
LEFT_COLUMNS = 4            # the paper's eight images as two rows of four
RIGHT_CELL = (1.6, 1.8)     # one image of a query row
RESULTS_FILE = "figure4.json"
LEFT_FILE, RIGHT_FILE = "figure4_left.png", "figure4_right.png"


def left_size(num_images: int) -> tuple:
  """(width, height) in pixels of figure4_left.png."""
  columns = min(num_images, LEFT_COLUMNS)
  rows = -(-num_images // LEFT_COLUMNS)
  return round(LEFT_CELL[0] * columns * DPI), round(LEFT_CELL[1] * rows * DPI)


def right_size(num_queries: int, neighbours: int) -> tuple:
  """(width, height) in pixels of figure4_right.png."""
  return (round(RIGHT_CELL[0] * (1 + neighbours) * DPI),
          round(RIGHT_CELL[1] * num_queries * DPI))


class NearestNeighbours:
  """Exact k nearest training vectors of each query, fed one chunk of the training set at a
  time (`add`); keeps the stored images of the neighbours of the first `keep_images` queries
  (for the drawing), nothing else of the chunks."""

  def __init__(self, queries: np.ndarray, k: int, keep_images: int = 0):
    self.queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
    self.norms = np.sum(self.queries.astype(np.float64) ** 2, axis=1)
    self.k, self.keep = k, keep_images
    q = len(self.queries)
    self.distances = np.full((q, 0), np.inf)
    self.files = np.empty((q, 0), dtype=object)
    self.labels = np.empty((q, 0), dtype=np.int64)
    self.images = [[] for _ in range(min(keep_images, q))]
    self.seen = 0

  def add(self, features: np.ndarray, files: Sequence[str], labels: Sequence[int],
          images: Optional[np.ndarray] = None) -> None:
    features = np.asarray(features, np.float32).reshape(len(features), -1)
    if not len(features):
      return
    # Rank by the expanded square distance (one matmul), then keep 2k candidates per query
    # and recompute their distances exactly from the differences.
    approx = (self.norms[:, None] + np.sum(features.astype(np.float64) ** 2, axis=1)[None]
              - 2.0 * (self.queries @ features.T))
    take = min(2 * self.k, len(features))
    candidates = np.argpartition(approx, take - 1, axis=1)[:, :take]
    exact = np.sqrt(np.sum((self.queries[:, None, :].astype(np.float64)
                            - features[candidates].astype(np.float64)) ** 2, axis=2))
    files = np.asarray(files, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    all_d = np.concatenate([self.distances, exact], axis=1)
    all_f = np.concatenate([self.files, files[candidates]], axis=1)
    all_l = np.concatenate([self.labels, labels[candidates]], axis=1)
    order = np.argsort(all_d, axis=1, kind="stable")[:, :self.k]
    rows = np.arange(len(self.queries))[:, None]
    if images is not None:
      for q in range(len(self.images)):
        pool = self.images[q] + [images[i] for i in candidates[q]]
        self.images[q] = [pool[j] for j in order[q]]
    self.distances, self.files, self.labels = all_d[rows, order], all_f[rows, order], all_l[
        rows, order]
    self.seen += len(features)

  def results(self) -> List[List[dict]]:
    return [[{"file": str(f), "label": int(l), "distance": float(d)}
             for f, l, d in zip(self.files[q], self.labels[q], self.distances[q])]
            for q in range(len(self.queries))]


def _softmax(logits):
  z = np.exp(logits - logits.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def figure4(workdir: str, data_dir: Optional[str], output_dir: str, split: str = "validation",
            num_images: int = 8, num_queries: int = 0, draw_queries: int = 5,
            neighbours: int = 6, chunk_size: int = 256, which: str = "best",
            progress: bool = True, plot: bool = True) -> dict:
  """Computes Figure 4 and writes its PNGs and figure4.json into output_dir; returns the
  results (what the JSON holds, plus "output")."""
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  for name, value, low in (("num_images", num_images, 1), ("num_queries", num_queries, 0),
                           ("draw_queries", draw_queries, 1), ("neighbours", neighbours, 1),
                           ("chunk_size", chunk_size, 1)):
    if value < low:
      raise errors.invalid(f"--{name}", value, f"an integer >= {low}")
  if split not in ("validation", "test"):
    raise errors.invalid("--split", split, "validation or test")
  plt = experiments.require_matplotlib() if plot else None
  model, metadata = workdir_lib.load_model(workdir, which)
  data_dir = data_dir or metadata["data_dir"]
  stats = workdir_lib.load_statistics(metadata["workdir"])
  mean = metadata.get("augment", {}).get("mean", "per_pixel")
  label_offset = (metadata.get("data") or {}).get("label_offset") or 0
  fc7 = extract.layer_model(model, FEATURE_LAYER if FEATURE_LAYER in
                            [l.name for l in model.layers] else model.layers[-2].name)
  info = dataset_info.read(data_dir) or {}
  classes = metadata.get("classes") or info.get("classes") or [
      [str(i), str(i)] for i in range(metadata["num_classes"])]
  total_queries = extract.count_records(data_dir, split)
  if not total_queries:
    raise FileNotFoundError(f"{data_dir} holds no {split} images.")
  wanted = num_queries or total_queries

  # The queries (the first `wanted` images of the split): their fc7 vectors; and the first
  # num_images' top-5 for the left panel. Both panels draw the first images of the split.
  q_features, q_files, q_labels, q_images, predictions = [], [], [], [], []
  limit = min(max(wanted, num_images), total_queries)
  bar = cli.Progress(limit, f"{FEATURE_LAYER} of {split}", progress)
  read = 0
  for images, labels, names in extract.read_split(data_dir, split, chunk_size, label_offset):
    queries = max(0, wanted - len(q_files))
    if queries:
      q_features.append(extract.features_of(fc7, images[:queries], stats, mean))
      q_files.extend(names[:queries])
      q_labels.extend(int(l) for l in labels[:queries])
    q_images.extend(images[:max(0, max(num_images, draw_queries) - len(q_images))])
    take = max(0, num_images - len(predictions))
    if take:
      probs = _softmax(extract.features_of(model, images[:take], stats, mean))
      for p, l, f in zip(probs, labels[:take], names[:take]):
        top = np.argsort(-p, kind="stable")[:5]
        predictions.append({"file": f, "label": int(l), "top5": [
            {"class": int(c), "name": classes[c][1], "probability": float(p[c])} for c in top]})
    read += len(names)
    bar.update(min(read, limit))
    if read >= limit:
      break
  bar.update(min(read, limit), final=True)

  # The exact search over the training split, one chunk at a time.
  search = NearestNeighbours(np.concatenate(q_features), neighbours,
                             keep_images=draw_queries if plot else 0)
  bar = cli.Progress(extract.count_records(data_dir, "train"),
                         f"{FEATURE_LAYER} search over train", progress)
  for images, labels, names in extract.read_split(data_dir, "train", chunk_size, label_offset):
    search.add(extract.features_of(fc7, images, stats, mean), names, labels,
               images if plot else None)
    bar.update(search.seen)
  bar.update(search.seen, final=True)
  if not search.seen:
    raise FileNotFoundError(f"{data_dir} holds no train images to search.")

  results = {
      "workdir": metadata["workdir"], "checkpoint": metadata["checkpoint"],
      "data_dir": data_dir, "split": split, "layer": fc7.name.rsplit("_to_", 1)[-1],
      "num_train_searched": search.seen,
      "queries": [{"file": f, "label": l, "neighbours": n}
                  for f, l, n in zip(q_files, q_labels, search.results())],
      "predictions": predictions,
  }
  os.makedirs(output_dir, exist_ok=True)
  if plot:
    _draw_left(plt, q_images[:len(predictions)], predictions, classes,
               os.path.join(output_dir, LEFT_FILE))
    rows = min(draw_queries, len(q_files))
    _draw_right(plt, q_images[:rows], search.images[:rows], results["queries"][:rows],
                classes, neighbours, os.path.join(output_dir, RIGHT_FILE))
  files.write_json(os.path.join(output_dir, RESULTS_FILE), results)
  return {**results, "output": output_dir}


def _save(plt, figure, path):
  files.write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=DPI))
  plt.close(figure)


def _short(name: str, width: int = 22) -> str:
  name = name.split(",")[0]
  return name if len(name) <= width else name[:width - 1] + "…"


def _draw_left(plt, images, predictions, classes, path):
  n = len(images)
  columns, rows = min(n, LEFT_COLUMNS), -(-n // LEFT_COLUMNS)
  figure = plt.figure(figsize=(LEFT_CELL[0] * columns, LEFT_CELL[1] * rows))
  for i, (image, prediction) in enumerate(zip(images, predictions)):
    r, c = divmod(i, LEFT_COLUMNS)
    left, bottom = c / columns, 1 - (r + 1) / rows
    w, h = 1 / columns, 1 / rows
    ax = figure.add_axes([left + 0.1 * w, bottom + 0.47 * h, 0.8 * w, 0.5 * h])
    ax.imshow(image)
    ax.set_axis_off()
    # The paper writes the correct label under each image.
    ax.text(0.5, -0.02, _short(classes[prediction["label"]][1], 28), transform=ax.transAxes,
            ha="center", va="top", fontsize=9)
    bars = figure.add_axes([left + 0.45 * w, bottom + 0.04 * h, 0.5 * w, 0.33 * h])
    top = prediction["top5"][::-1]
    colours = ["tab:red" if t["class"] == prediction["label"] else "tab:blue" for t in top]
    bars.barh(range(len(top)), [t["probability"] for t in top], color=colours)
    bars.set_yticks(range(len(top)), [_short(t["name"], 16) for t in top], fontsize=7)
    bars.set_xlim(0, 1)
    bars.tick_params(axis="x", labelsize=6)
  _save(plt, figure, path)


def _draw_right(plt, queries, neighbour_images, entries, classes, k, path):
  rows = len(queries)
  figure = plt.figure(figsize=(RIGHT_CELL[0] * (1 + k), RIGHT_CELL[1] * rows))
  for r in range(rows):
    for c in range(1 + k):
      ax = figure.add_axes([c / (1 + k) + 0.03 / (1 + k), 1 - (r + 1) / rows + 0.12 / rows,
                            0.94 / (1 + k), 0.78 / rows])
      ax.set_axis_off()
      if c == 0:
        ax.imshow(queries[r])
        ax.set_title(f"query: {_short(classes[entries[r]['label']][1], 14)}", fontsize=7,
                     color="tab:red")
      elif c - 1 < len(neighbour_images[r]):
        n = entries[r]["neighbours"][c - 1]
        ax.imshow(neighbour_images[r][c - 1])
        ax.set_title(f"{_short(classes[n['label']][1], 12)} d={n['distance']:.3g}", fontsize=6)
  _save(plt, figure, path)


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
  try:
    results = figure4(FLAGS.workdir, FLAGS.data_dir, FLAGS.output_dir, FLAGS.split,
                      FLAGS.num_images, FLAGS.num_queries, FLAGS.draw_queries,
                      FLAGS.neighbours, FLAGS.chunk_size, FLAGS.which, FLAGS.progress,
                      FLAGS.plot)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"Figure 4: {len(results['queries'])} queries, {results['num_train_searched']:,} "
        f"training images searched; wrote {results['output']}/{RESULTS_FILE}"
        + (f", {LEFT_FILE}, {RIGHT_FILE}" if FLAGS.plot else ""))


def define_flags(f=FLAGS):
  flags.DEFINE_string("workdir", None, "The trained run (a training workdir).", flag_values=f)
  flags.DEFINE_string("data_dir", None, "Its shards; default: the data_dir it trained on.",
                      flag_values=f)
  flags.DEFINE_string("output_dir", None, "Where the PNGs and figure4.json go.", flag_values=f)
  flags.DEFINE_enum("split", "validation", ("validation", "test"), "The query images' split.",
                    flag_values=f)
  flags.DEFINE_integer("num_images", 8, "Left panel: images with their top-5 (paper: 8).",
                       flag_values=f)
  flags.DEFINE_integer("num_queries", 0, "Queries searched (the first of the split); 0: all.",
                       flag_values=f)
  flags.DEFINE_integer("draw_queries", 5, "Right panel: query rows drawn (paper: 5).",
                       flag_values=f)
  flags.DEFINE_integer("neighbours", 6, "Nearest training images per query (paper: 6).",
                       flag_values=f)
  flags.DEFINE_integer("chunk_size", 256, "Training images per search step (bounds memory).",
                       flag_values=f)
  flags.DEFINE_enum("which", "best", ("best", "latest"), "Checkpoint of the workdir.",
                    flag_values=f)
  flags.DEFINE_bool("progress", True, "Progress bars on stderr.", flag_values=f)
  flags.DEFINE_bool("plot", True, "Write the PNGs (needs matplotlib).", flag_values=f)
  flags.mark_flags_as_required(["workdir", "output_dir"], flag_values=f)


def run():
  """The command (`python -m keras_alexnet.experiments.figure4`, or its console script)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
