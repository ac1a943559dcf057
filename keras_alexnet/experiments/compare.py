"""Trains two or more flagfiles on the same data with the same seed; one table, one plot.

  python -m keras_alexnet.experiments.compare \
      --flagfiles=flags/paper.cfg,flags/ablations/no_lrn.cfg \
      --data_dir=/data/imagenet-shards --output_dir=/runs/compare-lrn \
      [--train_flags="--epochs=10 --strategy=one_device"]

Each flagfile runs as its own `python -m keras_alexnet.train --flagfile=F --data_dir=DATA
--workdir=OUTPUT/<name> --seed=SEED <train_flags>`, one after the other (the runs would only
compete for the same devices), with its log in OUTPUT/logs/<name>.log. Rerunning the command
resumes unfinished runs and re-reads finished ones (training resumes from a workdir's last
checkpoint and has nothing left to do in a finished one).

Results come from each workdir's last checkpoint (checkpoints/step-*/state.json: the validation
top-1/top-5 error and loss after every epoch, centre crop) and config.json (the model, whose
parameters and forward FLOPs per image are counted). OUTPUT/comparison.md holds the table,
OUTPUT/comparison.json the same with every epoch, OUTPUT/comparison.png the validation curves.
Time is each training command's wall time, start-up included.
"""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from keras_alexnet import cli
from keras_alexnet import experiments
from keras_alexnet import files

LOG_TAIL_LINES = 15
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
  flagfiles: Tuple[str, ...]
  data_dir: str
  output_dir: str
  names: Tuple[str, ...] = ()           # Default: the flagfiles' base names.
  seed: int = 0
  train_flags: Tuple[str, ...] = ()     # Passed to every run, after --flagfile.
  plot: bool = True


@dataclasses.dataclass
class Result:
  name: str
  flagfile: str
  workdir: str
  seconds: float
  epochs: List[dict]                    # [{"epoch", "step", "learning_rate", "validation"}]
  params: int
  flops_per_image: int
  tiny_model: bool

  def final(self, key: str) -> Optional[float]:
    for epoch in reversed(self.epochs):
      if key in epoch.get("validation", {}):
        return epoch["validation"][key]
    return None

  def best(self, key: str) -> Optional[float]:
    values = [e["validation"][key] for e in self.epochs if key in e.get("validation", {})]
    return min(values) if values else None


def run_names(config: CompareConfig) -> List[str]:
  if config.names:
    return list(config.names)
  return [os.path.splitext(os.path.basename(f))[0] for f in config.flagfiles]


def check_config(config: CompareConfig) -> None:
  """Raises ValueError naming the first bad setting; runs nothing, writes nothing."""
  if len(config.flagfiles) < 2:
    raise ValueError(f"--flagfiles must name at least two flagfiles to compare; received "
                     f"{list(config.flagfiles)}.")
  for flagfile in config.flagfiles:
    cli.resolve_flagfile(flagfile)   # ValueError naming it and the shipped recipes
  if config.names and len(config.names) != len(config.flagfiles):
    raise ValueError(f"--names must give one name per flagfile ({len(config.flagfiles)}); "
                     f"received {list(config.names)}.")
  names = run_names(config)
  bad = [n for n in names if not _NAME_RE.match(n) or n == "logs"]
  if bad:
    raise ValueError(f"Run names {bad} are not usable as folder names (allowed: letters, "
                     "digits, '_', '-', '.'; not 'logs'); pass --names.")
  if len(set(names)) != len(names):
    raise ValueError(f"Two runs would share a workdir: names {names}; pass --names=A,B,...")
  if not config.data_dir or not os.path.isdir(config.data_dir):
    raise ValueError(f"--data_dir must be an existing folder of TFRecord shards; received "
                     f"{config.data_dir!r}.")
  if not config.output_dir:
    raise ValueError("--output_dir is required: the runs' workdirs and the table go there.")
  reserved = [f for f in config.train_flags if f.split("=")[0].lstrip("-") in
              ("flagfile", "data_dir", "workdir", "seed")]
  if reserved:
    raise ValueError(f"--train_flags must not set {reserved}: the comparison sets the flagfile, "
                     "data, workdir and seed of every run itself.")
  if config.plot:
    experiments.require_matplotlib()


def train_command(config: CompareConfig, flagfile: str, workdir: str) -> List[str]:
  return [sys.executable, "-m", "keras_alexnet.train",
          f"--flagfile={cli.resolve_flagfile(flagfile)}",
          f"--data_dir={config.data_dir}", f"--workdir={workdir}", f"--seed={config.seed}",
          *config.train_flags]


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def train_all(config: CompareConfig) -> List[Tuple[str, str, str, float]]:
  """Runs the training commands one after the other; (name, flagfile, workdir, seconds).
  Raises RuntimeError naming the run and its log when a command fails."""
  logs = os.path.join(config.output_dir, "logs")
  os.makedirs(logs, exist_ok=True)
  runs = []
  for name, flagfile in zip(run_names(config), config.flagfiles):
    workdir = os.path.join(config.output_dir, name)
    command = train_command(config, flagfile, workdir)
    log = os.path.join(logs, f"{name}.log")
    logging.info("Training %s: %s (log: %s)", name, shlex.join(command), log)
    start = time.perf_counter()
    with open(log, "w") as f:
      code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - start
    if code != 0:
      raise RuntimeError(f"Training {name} ({flagfile}) failed with exit status {code}; its "
                         f"log {log} ends:\n{_tail(log)}")
    runs.append((name, flagfile, workdir, seconds))
  return runs


def read_result(name: str, flagfile: str, workdir: str, seconds: float) -> Result:
  """The per-epoch validation results of a finished workdir, and its model's size."""
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import model as model_lib  # pylint: disable=g-import-not-at-top
  store = workdir_lib.CheckpointStore(workdir)
  steps = store.steps()
  if not steps:
    raise FileNotFoundError(f"{workdir} holds no checkpoint: the run {name} ({flagfile}) "
                            "saved nothing.")
  with open(os.path.join(store.path(steps[-1]), workdir_lib.STATE_FILE)) as f:
    state = json.load(f)
  metadata = workdir_lib.read_metadata(workdir)
  model_config = workdir_lib.model_config_from_json(metadata["model_config"])
  tiny = bool(metadata.get("tiny_model", False))
  net = workdir_lib.build_model(model_config, tiny=tiny)
  result = Result(name, flagfile, workdir, seconds, state.get("history", []),
                  int(net.count_params()), model_lib.flops_per_image(net), tiny)
  del net
  return result


def _pct(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:.2f}%"


def table(results: Sequence[Result]) -> str:
  """The comparison as a Markdown table (validation errors, centre crop)."""
  lines = ["| run | flagfile | epochs | top-1 error | top-5 error | best top-1 | loss | "
           "parameters | GFLOP/image | time (s) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    loss = r.final("loss")
    lines.append(
        f"| {r.name} | {r.flagfile} | {len(r.epochs)} | {_pct(r.final('top1_error'))} | "
        f"{_pct(r.final('top5_error'))} | {_pct(r.best('top1_error'))} | "
        f"{'-' if loss is None else f'{loss:.4f}'} | {r.params:,} | "
        f"{r.flops_per_image / 1e9:.3f} | {r.seconds:.1f} |")
  if any(r.tiny_model for r in results):
    lines.append("\n(tiny_model runs: the test network, not AlexNet; the ablation switches do "
                 "not apply to it.)")
  return "\n".join(lines)


def plot(results: Sequence[Result], path: str, title: str = "") -> None:
  """Validation top-1 (solid) and top-5 (dashed) error against epochs, one colour per run."""
  plt = experiments.require_matplotlib()
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for i, r in enumerate(results):
    colour = f"C{i % 10}"
    for key, style, label in (("top1_error", "-", "top-1"), ("top5_error", "--", "top-5")):
      points = [(e["epoch"], e["validation"][key]) for e in r.epochs
                if key in e.get("validation", {})]
      if points:
        xs, ys = zip(*points)
        axes.plot(xs, ys, style, color=colour, marker="o", markersize=3,
                  label=f"{r.name} {label}")
  axes.set_xlabel("Epoch")
  axes.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  axes.set_ylabel("Validation error (centre crop)")
  axes.set_ylim(0, 1)
  axes.set_title(title or "Validation error", fontsize=10)
  axes.legend(fontsize=8)
  figure.tight_layout()
  try:
    experiments.save_figure(figure, path)
  finally:
    plt.close(figure)


def compare(config: CompareConfig) -> dict:
  """Trains every flagfile, reads the results, writes comparison.{md,json,png}."""
  check_config(config)
  os.makedirs(config.output_dir, exist_ok=True)
  results = [read_result(*run) for run in train_all(config)]
  text = table(results)
  header = (f"Comparison on {os.path.abspath(config.data_dir)}, seed {config.seed}"
            + (f", extra flags: {' '.join(config.train_flags)}" if config.train_flags else "")
            + ". Validation errors after the last epoch (centre crop).\n\n")
  paths = {k: os.path.join(config.output_dir, f"comparison.{k}") for k in ("md", "json", "png")}
  files.write_text(paths["md"], header + text + "\n")
  if config.plot:
    plot(results, paths["png"], ", ".join(r.name for r in results))
  else:
    del paths["png"]
  summary = {"data_dir": os.path.abspath(config.data_dir), "seed": config.seed,
             "train_flags": list(config.train_flags),
             "runs": [{**dataclasses.asdict(r), "top1_error": r.final("top1_error"),
                       "top5_error": r.final("top5_error"),
                       "best_top1_error": r.best("top1_error")} for r in results],
             "files": paths}
  files.write_json(paths["json"], summary)
  return {"table": header + text, **summary}


# ---------------------------------------------------------------------------------------------
# Command.

FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS):
  """The command's flags, on flag_values (tests pass their own FlagValues)."""
  f = flag_values
  flags.DEFINE_list("flagfiles", [], "Two or more training flagfiles, e.g. "
                    "flags/paper.cfg,flags/ablations/no_lrn.cfg.", flag_values=f)
  flags.DEFINE_list("names", [], "A name per flagfile (default: the file names).",
                    flag_values=f)
  flags.DEFINE_string("data_dir", None, "TFRecord shards every run trains and validates on.",
                      flag_values=f)
  flags.DEFINE_string("output_dir", None, "Workdirs <output_dir>/<name>, logs, the table.",
                      flag_values=f)
  flags.DEFINE_integer("seed", 0, "The same --seed for every run.", flag_values=f)
  flags.DEFINE_string("train_flags", "", "Extra training flags for every run, e.g. "
                      "\"--epochs=10 --strategy=one_device\".", flag_values=f)
  flags.DEFINE_bool("plot", True, "Write comparison.png (needs matplotlib).", flag_values=f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
  try:
    config = CompareConfig(
        flagfiles=tuple(FLAGS.flagfiles), data_dir=FLAGS.data_dir, output_dir=FLAGS.output_dir,
        names=tuple(FLAGS.names), seed=FLAGS.seed,
        train_flags=tuple(shlex.split(FLAGS.train_flags)), plot=FLAGS.plot)
    out = compare(config)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    raise SystemExit(f"error: {e}") from None
  print(out["table"])
  print("Wrote " + ", ".join(out["files"].values()) + ".")


def run():
  """The command (`python -m keras_alexnet.experiments.compare`, or its console script)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
