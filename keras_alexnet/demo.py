"""The whole path on a generated dataset, in one command (README's `make demo`).

    python -m keras_alexnet.demo [--work_dir=demo_work]

Each step is the project's own command-line tool, run as a subprocess so that what you see is
what you would run by hand (every command is printed):

  1. draw the dataset: shapes in the ILSVRC extracted layout (keras_alexnet.demo_data)
  2. python -m tfrecords.build          the TFRecord shards + dataset_info.json
  3. python -m keras_alexnet.train      the paper's AlexNet with flags/demo.cfg
  4. python -m keras_alexnet.evaluate   top-1/top-5 error, centre crop and the 10 views
  5. python -m keras_alexnet.export     the SavedModel (TF Serving's layout)
  6. python -m keras_alexnet.predict    the held-out JPEGs through the SavedModel, top-5 names
  7. conv1's 96 kernels as a PNG, laid out as the paper's Figure 3
  8. python -m keras_alexnet.experiments.figure4   the paper's Figure 4 for this run: top-5
     bars of validation images, and their nearest training images by fc7

A second run reuses what exists; each step decides by its own completion marker (the
dataset's manifest, the builder's dataset_info.json, the trainer's final checkpoint, an
evaluation of the best checkpoint, an export of it, a figure4.json of it). An interrupted run
continues: the dataset is written whole or not at all, the builder resumes its shards,
training resumes from its last checkpoint. The work folder carries a marker file; a folder
that is not empty and has no marker (not made by the demo) is refused before anything is written.
"""

import dataclasses
import io
import json
import os
import resource
import subprocess
import sys
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from keras_alexnet import cli
from keras_alexnet import dataset_info
from keras_alexnet import demo_data
from keras_alexnet import files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FLAGFILE = "flags/demo.cfg"   # a path, or the shipped recipe (keras_alexnet.cli)
MARKER = ".keras_alexnet_demo"
KERNELS_PNG = "conv1_kernels.png"
# conv1's kernels minus their initial values: a few hundred steps move the paper's N(0, 0.01)
# kernels by about a third of their norm, so the trained kernels alone still look like the
# initial noise; the change shows what the net learned.
LEARNED_PNG = "conv1_learned.png"
SUMMARY = "summary.json"
# The paper's Figure 3 is 6 rows of 16: tower a's 48 kernels in the top 3, tower b's below.
KERNEL_COLUMNS = 16
# 10 views of each image go through the net at once: 16 images make 160 crops, which keeps
# the activations of the evaluation within a few hundred MB.
EVAL_BATCH_SIZE = 16


class DemoError(Exception):
  """A step failed or the demo was pointed at a folder it must not use."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  work_dir: str
  train_flagfile: str = DEFAULT_FLAGFILE
  train_flags: tuple = ()         # extra flags for the trainer, after the flagfile
  data: demo_data.DemoDataConfig = demo_data.DemoDataConfig()
  train_shards: int = 8
  validation_shards: int = 2
  eval_batch_size: int = EVAL_BATCH_SIZE


# ---------------------------------------------------------------------------------------------
# The work folder.


def claim_work_dir(work_dir: str) -> None:
  """Makes work_dir the demo's (new, empty, or already marked); DemoError otherwise."""
  if os.path.exists(work_dir) and not os.path.isdir(work_dir):
    raise DemoError(f"--work_dir={work_dir} is a file; pass a folder the demo may fill.")
  marker = os.path.join(work_dir, MARKER)
  if os.path.isdir(work_dir) and os.listdir(work_dir) and not os.path.exists(marker):
    raise DemoError(
        f"--work_dir={work_dir} is not empty and was not made by the demo (it has no {MARKER} "
        "file); nothing was changed. Pass a new or empty folder.")
  if not os.path.exists(marker):
    os.makedirs(work_dir, exist_ok=True)
    with open(marker, "w") as f:
      f.write("Made by `python -m keras_alexnet.demo`; everything here can be deleted.\n")


# ---------------------------------------------------------------------------------------------
# Steps.


class _Steps:
  """Prints numbered step headers and runs the tools, timing each step."""

  def __init__(self, total: int):
    self.total, self.number = total, 0
    self.start = time.monotonic()
    self.seconds, self.cpu_seconds = {}, {}
    self._name, self._began, self._cpu = None, None, None

  def begin(self, name: str, what: str) -> None:
    self._end()
    self.number += 1
    self._name, self._began, self._cpu = name, time.monotonic(), _cpu_seconds()
    print(f"\n[{self.number}/{self.total}] {what}  (demo time {self._clock()})", flush=True)

  def _end(self) -> None:
    if self._name:
      self.seconds[self._name] = round(time.monotonic() - self._began, 1)
      self.cpu_seconds[self._name] = round(_cpu_seconds() - self._cpu, 1)
      self._name = None

  def finish(self) -> None:
    self._end()

  def _clock(self) -> str:
    s = int(time.monotonic() - self.start)
    return f"{s // 60}:{s % 60:02d}"

  def total_seconds(self) -> float:
    return round(time.monotonic() - self.start, 1)


def _cpu_seconds() -> float:
  """CPU time of this process and its finished children: on a busy machine, what a step
  would take on an idle one is about this divided by the cores it keeps busy."""
  return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                               resource.getrusage(resource.RUSAGE_CHILDREN)))


def _env() -> dict:
  env = dict(os.environ)
  if os.path.isdir(os.path.join(REPO, "tfrecords")):
    # A checkout: its own package and builder, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def run_tool(module: str, args: Sequence[str], capture: bool = False) -> str:
  """Runs `python -m module args`, output shown live (or captured and returned)."""
  command = [sys.executable, "-m", module, *args]
  print("$ python " + " ".join(command[1:]), flush=True)
  result = subprocess.run(command, env=_env(), text=True,
                          stdout=subprocess.PIPE if capture else None)
  if result.returncode != 0:
    raise DemoError(f"`python -m {module}` failed (exit status {result.returncode}); its "
                    "messages are above. Fix the cause and run the demo again: it continues "
                    "from the steps already done.")
  return result.stdout or ""


def _paths(work_dir: str) -> dict:
  return {name: os.path.join(work_dir, name)
          for name in ("images", "tfrecords", "train", "export")} | {
              "evaluation": os.path.join(work_dir, "evaluation.json"),
              "kernels": os.path.join(work_dir, KERNELS_PNG),
              "learned": os.path.join(work_dir, LEARNED_PNG),
              "figure4": os.path.join(work_dir, "figure4"),
              "summary": os.path.join(work_dir, SUMMARY)}


def _best_checkpoint(train_dir: str) -> str:
  from keras_alexnet import workdir as workdir_lib   # pylint: disable=g-import-not-at-top
  return workdir_lib.checkpoint_prefix(train_dir, "best")


def _read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _exported_checkpoint(export_dir: str) -> Optional[tuple]:
  """(version folder, checkpoint it was exported from) of the newest export, or None."""
  from keras_alexnet import export   # pylint: disable=g-import-not-at-top
  versions = export.versions(export_dir)
  if not versions:
    return None
  folder = os.path.join(export_dir, str(versions[-1]))
  info = _read_json(os.path.join(folder, export.ASSETS_EXTRA, export.INFO_FILENAME)) or {}
  return folder, (info.get("metadata") or {}).get("checkpoint")


def write_kernels_png(train_dir: str, path: str, learned_path: str) -> str:
  """conv1's kernels of the best checkpoint as a PNG in the layout of the paper's Figure 3
  (path), and the same for their change since initialization (learned_path)."""
  from keras_alexnet import workdir as workdir_lib   # pylint: disable=g-import-not-at-top
  model, metadata = workdir_lib.load_model(train_dir, "best")
  kernels = np.asarray(model.get_layer("conv1").kernel)
  initial = np.asarray(workdir_lib.initial_model(train_dir).get_layer("conv1").kernel)
  _write_grid_png(kernels, path)
  _write_grid_png(kernels - initial, learned_path)
  return metadata["checkpoint"]


def _write_grid_png(kernels, path: str) -> None:
  from PIL import Image   # pylint: disable=g-import-not-at-top
  from keras_alexnet import summaries   # pylint: disable=g-import-not-at-top
  grid = summaries.kernel_grid(kernels, columns=KERNEL_COLUMNS)[0]
  image = Image.fromarray(np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8), "RGB")
  png = io.BytesIO()
  image.save(png, "PNG")
  files.write_bytes(path, png.getvalue())


def _format_predictions(predictions: list, truth: dict) -> tuple:
  """(lines, correct): one line per held-out image, its true name and the top-5 names."""
  lines, correct = [], 0
  for p in predictions:
    name = os.path.relpath(p["file"], REPO) if os.path.isabs(p["file"]) else p["file"]
    true = truth.get(os.path.basename(p["file"]), "?")
    if "error" in p:
      lines.append(f"  {os.path.basename(name):<18} {true:<9} error: {p['error']}")
      continue
    top5 = p["top5"]
    ok = top5[0]["name"] == true
    correct += ok
    ranked = ", ".join(f"{t['name']} {t['probability']:.2f}" for t in top5)
    lines.append(f"  {os.path.basename(p['file']):<18} {true:<9} {'ok ' if ok else 'NO '} "
                 f"{ranked}")
  return lines, correct


def run_demo(config: DemoConfig) -> dict:
  """Runs (or continues) the demo in config.work_dir; returns the summary it writes."""
  work_dir = os.path.abspath(config.work_dir)
  try:
    train_flagfile = cli.resolve_flagfile(config.train_flagfile)
  except ValueError as e:
    raise DemoError(f"--train_flagfile: {e}") from None
  demo_data.check_config(config.data)
  claim_work_dir(work_dir)
  paths = _paths(work_dir)
  steps = _Steps(8)
  summary = {"work_dir": work_dir, "reused": []}

  # 1. The dataset.
  steps.begin("dataset", "Drawing the dataset (shapes, ILSVRC extracted layout)")
  if demo_data.is_complete(paths["images"], config.data):
    print(f"done already: {paths['images']}/{demo_data.MANIFEST}")
    summary["reused"].append("dataset")
  manifest = demo_data.generate(
      paths["images"], config.data,
      progress=lambda done, total: print(f"\r{done:,}/{total:,} images", end="\n" if
                                         done == total else "", flush=True))
  print(f"{paths['images']}: " + ", ".join(f"{n:,} {split}" for split, n in
                                          manifest["num_files"].items())
        + f" images of {len(manifest['classes'])} classes; odd files: "
        + ", ".join(f"{kind} {path}" for path, kind in sorted(manifest["odd_files"].items())))

  # 2. TFRecords.
  steps.begin("build", "Building the TFRecords")
  if os.path.exists(os.path.join(paths["tfrecords"], dataset_info.FILENAME)):
    print(f"done already: {paths['tfrecords']}/{dataset_info.FILENAME}")
    summary["reused"].append("build")
  else:
    run_tool(cli.builder_module(), [
        f"--input={paths['images']}", f"--output_dir={paths['tfrecords']}",
        f"--classes_file={os.path.join(paths['images'], demo_data.CLASSES_FILE)}",
        "--validation_labels_file="
        f"{os.path.join(paths['images'], demo_data.VALIDATION_LABELS_FILE)}",
        f"--train_shards={config.train_shards}",
        f"--validation_shards={config.validation_shards}"])

  # 3. Training: the trainer resumes from its last checkpoint, and does nothing when the run
  # is complete.
  steps.begin("train", "Training AlexNet (flags/demo.cfg)")
  run_tool("keras_alexnet.train", [
      f"--flagfile={train_flagfile}", f"--data_dir={paths['tfrecords']}",
      f"--workdir={paths['train']}", *config.train_flags])
  best = _best_checkpoint(paths["train"])

  # 4. Evaluation of the best checkpoint.
  steps.begin("evaluate", "Evaluating top-1/top-5 (centre crop and the 10 views)")
  evaluation = _read_json(paths["evaluation"])
  if evaluation and [m.get("checkpoint") for m in evaluation.get("models", [])] == [best]:
    print(f"done already: {paths['evaluation']} (checkpoint {best})")
    summary["reused"].append("evaluate")
  else:
    run_tool("keras_alexnet.evaluate", [
        f"--workdirs={paths['train']}", "--views=center,ten",
        f"--batch_size={config.eval_batch_size}", f"--output={paths['evaluation']}"])
    evaluation = _read_json(paths["evaluation"])
  results = evaluation["models"][0]
  for view, label in (("center", "centre crop"), ("ten", "10 views")):
    print(f"{label:>12}: top-1 accuracy {100 * (1 - results[view]['top1_error']):.1f}%, "
          f"top-5 accuracy {100 * (1 - results[view]['top5_error']):.1f}% "
          f"({evaluation['examples']} validation images)")

  # 5. Export of the best checkpoint.
  steps.begin("export", "Exporting the SavedModel")
  exported = _exported_checkpoint(paths["export"])
  if exported and exported[1] == best:
    print(f"done already: {exported[0]} (checkpoint {best})")
    saved_model = exported[0]
    summary["reused"].append("export")
  else:
    saved_model = run_tool("keras_alexnet.export", [
        f"--workdir={paths['train']}", f"--export_dir={paths['export']}"],
                           capture=True).strip().splitlines()[-1]
    print(saved_model)

  # 6. The held-out images through the SavedModel.
  steps.begin("predict", "Classifying the held-out JPEGs through the SavedModel")
  out = run_tool("keras_alexnet.predict", [
      f"--saved_model={saved_model}", "--json",
      os.path.join(paths["images"], demo_data.HELDOUT)], capture=True)
  predictions = json.loads(out)
  truth = {os.path.basename(path): dict(manifest["classes"])[wnid]
           for path, wnid in manifest["heldout"].items()}
  lines, correct = _format_predictions(predictions, truth)
  print(f"  {'file':<18} {'true':<9}     top-5 (name probability)")
  print("\n".join(lines))
  print(f"{correct}/{len(predictions)} held-out images classified correctly (top-1).")

  # 7. The picture.
  steps.begin("kernels", "Drawing conv1's kernels (the paper's Figure 3)")
  write_kernels_png(paths["train"], paths["kernels"], paths["learned"])
  print(f"{paths['kernels']}: tower a's 48 kernels in the top 3 rows, tower b's below")
  print(f"{paths['learned']}: the same, minus their initial values (what training changed)")

  # 8. Figure 4 of the best checkpoint.
  from keras_alexnet.experiments import figure4   # pylint: disable=g-import-not-at-top
  steps.begin("figure4", "Drawing the paper's Figure 4 (top-5 bars, fc7 nearest neighbours)")
  drawn = _read_json(os.path.join(paths["figure4"], figure4.RESULTS_FILE))
  if drawn and drawn.get("checkpoint") == best:
    print(f"done already: {paths['figure4']}/{figure4.RESULTS_FILE} (checkpoint {best})")
    summary["reused"].append("figure4")
  else:
    run_tool("keras_alexnet.experiments.figure4", [
        f"--workdir={paths['train']}", f"--data_dir={paths['tfrecords']}",
        f"--output_dir={paths['figure4']}", f"--chunk_size={config.eval_batch_size * 4}"])
    drawn = _read_json(os.path.join(paths["figure4"], figure4.RESULTS_FILE))
  same_class = [sum(n["label"] == q["label"] for n in q["neighbours"]) / len(q["neighbours"])
                for q in drawn["queries"]]
  print(f"{paths['figure4']}/: {figure4.LEFT_FILE}, {figure4.RIGHT_FILE}, "
        f"{figure4.RESULTS_FILE}; of the {len(drawn['queries'][0]['neighbours'])} nearest "
        "training images (fc7) of each validation image, "
        f"{100 * float(np.mean(same_class)):.1f}% are of its class")
  steps.finish()

  summary.update({
      "seconds": steps.total_seconds(), "step_seconds": steps.seconds,
      "step_cpu_seconds": steps.cpu_seconds,
      "checkpoint": best, "saved_model": saved_model, "kernels_png": paths["kernels"],
      "learned_png": paths["learned"], "figure4_dir": paths["figure4"],
      "figure4_neighbours_same_class": float(np.mean(same_class)),
      "validation_examples": evaluation["examples"],
      "top1_accuracy": {v: 1 - results[v]["top1_error"] for v in ("center", "ten")},
      "top5_accuracy": {v: 1 - results[v]["top5_error"] for v in ("center", "ten")},
      "heldout_correct": correct, "heldout": len(predictions),
      "load_average": os.getloadavg(),
  })
  files.write_json(paths["summary"], summary)
  minutes, seconds = divmod(int(summary["seconds"]), 60)
  print(f"\nDemo done in {minutes}:{seconds:02d} ({', '.join(summary['reused']) or 'nothing'} "
        f"reused): top-1 accuracy {100 * summary['top1_accuracy']['ten']:.1f}% with the 10 "
        f"views, {100 * summary['top1_accuracy']['center']:.1f}% with the centre crop. "
        f"Summary: {paths['summary']}")
  return summary


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as the command, so importing this module (tests, other entry
  points) never clashes with another entry point's flags of the same name."""
  flags.DEFINE_string("work_dir", "demo_work", "Where everything goes; a new or empty folder, or "
                      "one a previous demo run made (it then continues).")
  flags.DEFINE_string("train_flagfile", DEFAULT_FLAGFILE, "The trainer's flagfile.")
  flags.DEFINE_multi_string("train_flag", [], "An extra trainer flag after the flagfile, e.g. "
                            "--train_flag=--epochs=3 (repeatable).")
  data = demo_data.DemoDataConfig()
  flags.DEFINE_integer("train_per_class", data.train_per_class, "Training images per class.")
  flags.DEFINE_integer("validation_per_class", data.validation_per_class,
                       "Validation images per class.")
  flags.DEFINE_integer("heldout_per_class", data.heldout_per_class,
                       "Images per class in neither split, for the predict step.")
  flags.DEFINE_integer("num_classes", data.num_classes,
                       f"Shapes to tell apart, 2..{len(demo_data.CLASSES)}.")
  flags.DEFINE_integer("seed", data.seed, "Seed of the drawn dataset.")
  flags.DEFINE_integer("train_shards", 8, "Training TFRecord shards.")
  flags.DEFINE_integer("validation_shards", 2, "Validation TFRecord shards.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
  config = DemoConfig(
      work_dir=FLAGS.work_dir, train_flagfile=FLAGS.train_flagfile,
      train_flags=tuple(FLAGS.train_flag),
      data=demo_data.DemoDataConfig(
          train_per_class=FLAGS.train_per_class,
          validation_per_class=FLAGS.validation_per_class,
          heldout_per_class=FLAGS.heldout_per_class, num_classes=FLAGS.num_classes,
          seed=FLAGS.seed),
      train_shards=FLAGS.train_shards, validation_shards=FLAGS.validation_shards)
  try:
    run_demo(config)
  except (DemoError, ValueError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit("\nInterrupted; run the same command again to continue where it stopped.")


def run():
  """The command (`python -m keras_alexnet.demo`, or its console script)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
