"""Top-1 and top-5 error on the validation split, as the paper's Table 2 reports them.

  python -m keras_alexnet.evaluate --workdirs=RUN [--which=best|latest]
  python -m keras_alexnet.evaluate --workdirs=RUN1,RUN2,...,RUN5     # and their ensemble
  python -m keras_alexnet.evaluate --checkpoint=RUN/checkpoints/step-00450000/ckpt
  python -m keras_alexnet.evaluate --workdirs=RUN --split=test   # ILSVRC-2010's (Table 1)

For each model: the centre 224x224 crop, and the paper's 10 views (section 4.1: four corners
and the centre, and their mirrors) with the softmax averaged over the views. With several
models, also their ensemble: the softmax (10-view averaged, for the 10-view row) averaged over
the models, as the paper's "5 CNNs" row (section 6). Members may differ in architecture (the
"7 CNNs*" row averages two nets with a sixth conv layer and five without) as long as they
were trained on the same classes. Writes the results as JSON and prints a table, with the
paper's rows beside the measured ones.
"""

import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from keras_alexnet import config as config_lib
from keras_alexnet import files

# Section 6, Table 2 (ILSVRC-2012 validation; * = pre-trained on the Fall 2011 release, with a
# sixth conv layer: flags/pretrain_fall2011.cfg, flags/finetune_fall2011_to_2012.cfg).
PAPER_RESULTS = {"1 CNN": {"top1_error": 0.407, "top5_error": 0.182},
                 "5 CNNs": {"top1_error": 0.381, "top5_error": 0.164},
                 "1 CNN*": {"top1_error": 0.390, "top5_error": 0.166},
                 "7 CNNs*": {"top1_error": 0.367, "top5_error": 0.154}}
# Section 6, Table 1 (ILSVRC-2010 test: flags/ilsvrc2010.cfg, evaluate --split=test).
PAPER_RESULTS_2010 = {"CNN": {"top1_error": 0.375, "top5_error": 0.170}}
TOP_K = (1, 5)
RESULTS_FILE = "evaluation.json"


def top_k_hits(probabilities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Whether each label is among the k highest of its row ([N, C], [N] -> bool [N]).

  A class tied with the label's score does not push it out, as in tf.math.in_top_k.
  """
  probabilities = np.asarray(probabilities)
  labels = np.asarray(labels)
  own = probabilities[np.arange(len(labels)), labels]
  higher = np.sum(probabilities > own[:, None], axis=1)
  return higher < k


def average_views(view_probabilities: np.ndarray) -> np.ndarray:
  """[N, V, C] softmax outputs of V views -> their mean [N, C] (section 4.1)."""
  return np.mean(view_probabilities, axis=1)


def ensemble(model_probabilities: Sequence[np.ndarray]) -> np.ndarray:
  """Softmax outputs [N, C] of several models -> their mean (section 6, "5 CNNs")."""
  return np.mean(np.stack(model_probabilities), axis=0)


class _Tally:
  def __init__(self):
    self.hits = {k: 0 for k in TOP_K}
    self.count = 0

  def add(self, probabilities, labels):
    for k in TOP_K:
      self.hits[k] += int(top_k_hits(probabilities, labels, k).sum())
    self.count += len(labels)

  def errors(self):
    if not self.count:
      return {}
    return {f"top{k}_error": 1 - self.hits[k] / self.count for k in TOP_K}


def _predictor(model, stats, mean, views):
  """uint8 batch -> {view: softmax [B, C]}, the 10 views averaged."""
  import tensorflow as tf   # pylint: disable=g-import-not-at-top
  from keras_alexnet import preprocessing   # pylint: disable=g-import-not-at-top

  size = int(model.input_shape[1])   # 224, or a converted Caffe net's 227

  @tf.function
  def predict(images):
    out = {}
    if "center" in views:
      logits = model(preprocessing.center_crop(images, stats, mean, size), training=False)
      out["center"] = tf.nn.softmax(tf.cast(logits, tf.float32))
    if "ten" in views:
      crops = preprocessing.ten_views(images, stats, mean, size)          # [B, 10, 224, 224, 3]
      batch = tf.shape(crops)[0]
      logits = model(tf.reshape(crops, [-1, *crops.shape[2:]]), training=False)
      probs = tf.nn.softmax(tf.cast(logits, tf.float32))
      out["ten"] = tf.reshape(probs, [batch, 10, -1])
    return out

  def run(images):
    out = {view: p.numpy() for view, p in predict(images).items()}
    if "ten" in out:
      out["ten"] = average_views(out["ten"])
    return out

  return run


def evaluate(config: config_lib.EvalConfig) -> dict:
  """Evaluates the models config names; returns the results (also written as JSON)."""
  from keras_alexnet import data_sources   # pylint: disable=g-import-not-at-top
  from keras_alexnet import dataset as dataset_lib   # pylint: disable=g-import-not-at-top
  from keras_alexnet import workdir as workdir_lib   # pylint: disable=g-import-not-at-top

  paths = list(config.workdirs) or [config.checkpoint]
  members = []
  for path in paths:
    model, metadata = workdir_lib.load_model(path, config.which)
    stats = workdir_lib.load_statistics(metadata["workdir"])
    members.append(dict(model=model, metadata=metadata, name=path,
                        mean=metadata.get("augment", {}).get("mean", "per_pixel"),
                        stats=stats))
  classes = {m["metadata"]["num_classes"] for m in members}
  if len(classes) > 1:
    raise ValueError(f"An ensemble needs models over the same classes; these have "
                     f"{sorted(classes)} classes: {paths}.")
  num_classes = classes.pop()
  _check_same_classes(members)
  data_dir = config.data_dir or members[0]["metadata"]["data_dir"]
  if not data_dir:
    raise ValueError(f"--data_dir is required: {paths[0]} names no dataset of its own (a net "
                     "converted from published weights); give the TFRecords to evaluate on.")
  data = data_sources.DataConfig(data_dir=data_dir,
                                label_offset=members[0]["metadata"].get("data", {})
                                .get("label_offset"))
  found = data_sources.dataset_metadata(data)
  if found["num_classes"] != num_classes:
    raise ValueError(f"The model has {num_classes} classes but the dataset in {data_dir} has "
                     f"{found['num_classes']}.")
  if not found["num_examples"].get(config.split):
    raise FileNotFoundError(f"{data_dir} holds no {config.split} shards; build them with "
                            f"`{data_sources.BUILD_COMMAND}`"
                            + (" (a test split: --layout=ilsvrc2010)." if config.split == "test"
                               else "."))

  predictors = [_predictor(m["model"], m["stats"], m["mean"], config.views) for m in members]
  tallies = [{v: _Tally() for v in config.views} for _ in members]
  ensemble_tally = {v: _Tally() for v in config.views}
  ds = dataset_lib.create_split(data, train=False, batch_size=config.batch_size,
                                split=config.split)
  if config.eval_steps:
    ds = ds.take(config.eval_steps)
  start = time.perf_counter()
  for images, labels in ds:
    labels = labels.numpy()
    outputs = [predict(images) for predict in predictors]
    for view in config.views:
      for tally, out in zip(tallies, outputs):
        tally[view].add(out[view], labels)
      if len(members) > 1:
        ensemble_tally[view].add(ensemble([out[view] for out in outputs]), labels)
  seconds = time.perf_counter() - start

  results = {
      "data_dir": data_dir, "split": config.split,
      "examples": tallies[0][config.views[0]].count, "seconds": seconds,
      "models": [{"path": m["name"], "checkpoint": m["metadata"]["checkpoint"],
                  **{v: t[v].errors() for v in config.views}}
                 for m, t in zip(members, tallies)],
      "paper": PAPER_RESULTS, "paper_ilsvrc2010": PAPER_RESULTS_2010,
  }
  if len(members) > 1:
    results["ensemble"] = {"members": len(members),
                           **{v: ensemble_tally[v].errors() for v in config.views}}
  output = config.output or os.path.join(
      members[0]["metadata"]["workdir"] if config.workdirs
      else os.path.dirname(members[0]["metadata"]["checkpoint"]), RESULTS_FILE)
  files.write_json(output, results)
  results["output"] = output
  return results


def _check_same_classes(members) -> None:
  """An ensemble averages class k of every member: the members' class lists (config.json's
  "classes", wnids in label order) must be the same, not only as long."""
  first = members[0]
  for member in members[1:]:
    a, b = first["metadata"].get("classes"), member["metadata"].get("classes")
    if a is not None and b is not None and [c[0] for c in a] != [c[0] for c in b]:
      differ = next(i for i, (x, y) in enumerate(zip(a, b)) if x[0] != y[0])
      raise ValueError(
          f"An ensemble needs models over the same classes in the same order; {member['name']} "
          f"has class {differ} = {b[differ][0]!r} where {first['name']} has {a[differ][0]!r}. "
          "Allowed: members trained on the same dataset (architectures may differ).")


def format_table(results: dict) -> str:
  names = {"center": "centre crop", "ten": "10 views"}
  rows = [("model", "views", "top-1 err", "top-5 err")]

  def add(name, errors_by_view):
    for view, errors in errors_by_view.items():
      if view in names and errors:
        rows.append((name, names[view], f"{100 * errors['top1_error']:.2f}%",
                     f"{100 * errors['top5_error']:.2f}%"))
  for model in results["models"]:
    add(model["path"], {k: v for k, v in model.items() if k in names})
  if "ensemble" in results:
    add(f"ensemble of {results['ensemble']['members']}",
        {k: v for k, v in results["ensemble"].items() if k in names})
  for name, errors in results["paper"].items():
    rows.append((f"paper, {name} (ILSVRC-2012 val)", "10 views",
                 f"{100 * errors['top1_error']:.1f}%", f"{100 * errors['top5_error']:.1f}%"))
  for name, errors in results.get("paper_ilsvrc2010", {}).items():
    rows.append((f"paper, Table 1 {name} (ILSVRC-2010 test)", "10 views",
                 f"{100 * errors['top1_error']:.1f}%", f"{100 * errors['top5_error']:.1f}%"))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths))) for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines) + f"\n({results['examples']} {results.get('split', 'validation')} images)"


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
  try:
    results = evaluate(config_lib.eval_config_from_flags(FLAGS))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(format_table(results))
  logging.info("Wrote %s.", results["output"])


def run():
  """The command (`python -m keras_alexnet.evaluate`, or its console script). Only as the
  command: importing this module (tests, other tools) defines no flags."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, config_lib.define_evaluate_flags)


if __name__ == "__main__":
  run()
