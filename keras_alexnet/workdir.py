"""The workdir of a training run: its layout, the run's metadata, the statistics it trained
with, the checkpoint store, and the model it describes (`load_model`).

A workdir holds

  config.json        what load_model needs to rebuild the model (ModelConfig fields, classes,
                     data_dir) and the whole training config, for the record
  flags.txt          the flags in effect, as a flagfile
  statistics.npz     the mean and PCA training used (evaluation and export subtract the same)
  checkpoints/step-00001234/{ckpt.index, ckpt.data-*, state.json}
  checkpoints/best.json   which step had the lowest validation error
  tensorboard/{train,validation}/
  train.lock         while a trainer runs (keras_alexnet.workdir_lock)

A checkpoint is written into checkpoints/.tmp-step-*, then renamed into place, so a directory
named step-* is always complete: a process killed while writing leaves only a .tmp-* folder,
removed at the next start, and the last good checkpoint loads. Should a checkpoint still fail to
load (a disk error, a copy cut short), the next older one is used, with a warning; a run never
restarts from step 0 while the workdir holds checkpoints.

Imports the model (and the test-only tiny net of keras_alexnet.testing), the preprocessing's
Statistics, keras_alexnet.files and errors; never the trainer.
"""

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from typing import Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import errors
from keras_alexnet import files
from keras_alexnet import model as model_lib
from keras_alexnet import testing

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
STATISTICS_FILE = "statistics.npz"
CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.json"
TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "state.json"
PREFIX = "ckpt"
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_TMP = ".tmp-"
# What save() names its temporary folders (tempfile.mkdtemp adds a random [a-z0-9_] suffix).
_TMP_RE = re.compile(r"^\.tmp-(?:step-\d{8,}|worker\d+)-[A-Za-z0-9_]+$")


# ---------------------------------------------------------------------------------------------
# The model a run describes.


def build_model(model_config: model_lib.ModelConfig, tiny: bool = False) -> keras.Model:
  """AlexNet from `model_config` (logits), or the test-only tiny net."""
  if tiny:
    return testing.tiny_model(model_config.num_classes, model_config.dropout, model_config.conv6)
  return model_lib.alexnet(model_config)


def model_config_to_json(config: model_lib.ModelConfig) -> dict:
  fields = dataclasses.asdict(config)
  fields["remove"] = list(config.remove)
  fields.pop("devices")   # Placement is the trainer's business; weights are the same.
  fields.pop("softmax")
  return fields


def model_config_from_json(fields: dict) -> model_lib.ModelConfig:
  known = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.json has model_config fields {unknown} this version of "
                     "keras_alexnet does not know.")
  # JSON has lists where the dataclass has tuples (remove, input_shape).
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return model_lib.ModelConfig(**fields)


def checkpointed_variables(model: keras.Model) -> dict:
  """The model's variables by path, the keys of its checkpoints.

  Dropout's seed-generator states are left out: the trainer sets them from (seed, step,
  replica) before every step, and their names depend on how many were made before.
  """
  return {v.path: v for v in model.variables if "seed_generator" not in v.path}


def nonfinite_variables(model: keras.Model) -> list:
  """Paths of the model's float variables holding a NaN or an Inf (none: an empty list)."""
  return [v.path for v in model.variables
          if tf.as_dtype(v.dtype).is_floating
          and not bool(tf.reduce_all(tf.math.is_finite(v.value)))]


def read_json(path: str, what: str):
  """json.load of `path`; ValueError naming the file when it is not readable JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not readable {what} (invalid JSON: {e}); it is damaged or "
                     "was cut short.") from None


# ---------------------------------------------------------------------------------------------
# Run metadata.


def read_metadata(workdir: str) -> dict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} is not a training workdir: it has no {CONFIG_FILE}.")
  metadata = read_json(path, "run metadata")
  if not isinstance(metadata, dict):
    raise ValueError(f"{path} must hold a JSON object; found {type(metadata).__name__}.")
  return metadata


def run_metadata(config, model_config, data_meta, stats, steps_per_epoch, replicas) -> dict:
  """config.json of a run (config: a config.Config; replicas: the strategy's number of replicas),
  in its JSON form (lists, not tuples) so that it compares with a saved one."""
  return json.loads(json.dumps({
      "model_config": model_config_to_json(model_config),
      "tiny_model": config.train.tiny_model,
      "num_classes": model_config.num_classes,
      "classes": data_meta.get("classes"),
      "data_dir": config.data.data_dir,
      "data": {"format": data_meta.get("format"), "num_examples": data_meta["num_examples"],
               "label_offset": data_meta.get("label_offset")},
      "statistics": STATISTICS_FILE,
      "statistics_source": stats.source,
      "augment": dataclasses.asdict(config.augment),
      "train": {**dataclasses.asdict(config.train), "steps_per_epoch": steps_per_epoch,
                "replicas": replicas,
                "peak_learning_rate": config.train.peak_learning_rate()},
  }))


def check_same_run(workdir, metadata):
  """A resumed run must be the run the workdir holds: same model, classes, batch, epoch."""
  try:
    old = read_metadata(workdir)
  except FileNotFoundError:
    return
  checks = [("model_config", old.get("model_config"), metadata["model_config"]),
            ("tiny_model", old.get("tiny_model", False), metadata["tiny_model"]),
            ("num_classes", old.get("num_classes"), metadata["num_classes"])]
  for key in ("batch_size", "steps_per_epoch", "seed"):
    checks.append((key, old.get("train", {}).get(key), metadata["train"][key]))
  checks.append(("trainable_from", old.get("train", {}).get("trainable_from"),
                 metadata["train"]["trainable_from"]))
  checks.append(("lr_schedule", old.get("train", {}).get("schedule", {}).get("kind"),
                 metadata["train"]["schedule"]["kind"]))
  for name, was, now in checks:
    if was != now:
      raise ValueError(
          f"{workdir} holds a run with {name}={was!r}, but this run has {name}={now!r}; "
          "resuming would mix two different runs. Use another --workdir, or --resume=false to "
          "start afresh here (the old checkpoints are moved aside, not deleted).")


def move_aside(workdir):
  """--resume=false: the previous run's checkpoints and events go to a dated folder."""
  moved = [n for n in (CHECKPOINT_DIR, TENSORBOARD_DIR)
           if os.path.exists(os.path.join(workdir, n))]
  if not moved:
    return
  base = os.path.join(workdir, time.strftime("previous-%Y%m%d-%H%M%S"))
  target, n = base, 1
  while True:   # Never into (or over) a folder that exists: two restarts in one second.
    try:
      os.makedirs(target)
      break
    except FileExistsError:
      n += 1
      target = f"{base}-{n}"
  for name in moved:
    os.replace(os.path.join(workdir, name), os.path.join(target, name))
  logging.warning("--resume=false: moved the previous run's %s to %s.", " and ".join(moved),
                  target)


# ---------------------------------------------------------------------------------------------
# The training-set statistics.


def save_statistics(workdir: str, stats: dataset_info.Statistics) -> None:
  arrays = dict(mean_rgb=stats.mean_rgb, eigenvalues=stats.eigenvalues,
                eigenvectors=stats.eigenvectors, source=np.array(stats.source))
  if stats.mean_image is not None:
    arrays["mean_image"] = stats.mean_image
  files.write_npz(os.path.join(workdir, STATISTICS_FILE), arrays)


def load_statistics(workdir: str) -> dataset_info.Statistics:
  """The mean and PCA the run in `workdir` trained with."""
  path = os.path.join(workdir, STATISTICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no {STATISTICS_FILE}: not a training workdir.")
  try:
    with np.load(path) as z:
      return dataset_info.Statistics(
          mean_image=z["mean_image"] if "mean_image" in z else None, mean_rgb=z["mean_rgb"],
          eigenvalues=z["eigenvalues"], eigenvectors=z["eigenvectors"],
          source=f"{path} (from {z['source']})")
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a readable statistics file ({type(e).__name__}: {e}); "
                     "it is damaged or cut short.") from None


# ---------------------------------------------------------------------------------------------
# Checkpoints.


class CheckpointStore:
  """The step-* checkpoints of a workdir: atomic writes, pruning, fallback on load.

  is_chief=False (other workers of a multi-worker run) writes into a private temporary folder
  and deletes it: every worker must take part in saving distributed variables, but only the
  chief's copy is kept.
  """

  def __init__(self, workdir: str, keep: int = 3, is_chief: bool = True, worker_id: int = 0):
    self.directory = os.path.join(workdir, CHECKPOINT_DIR)
    self.keep = keep
    self.is_chief = is_chief
    self.worker_id = worker_id

  # Reading. ------------------------------------------------------------------------------------

  def steps(self) -> list:
    """Steps of the complete checkpoints, oldest first."""
    if not os.path.isdir(self.directory):
      return []
    found = []
    for name in os.listdir(self.directory):
      match = _STEP_RE.match(name)
      if match and os.path.exists(os.path.join(self.directory, name, STATE_FILE)):
        found.append(int(match.group(1)))
    return sorted(found)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, f"step-{step:08d}")

  def prefix(self, step: int) -> str:
    return os.path.join(self.path(step), PREFIX)

  def best(self) -> Optional[dict]:
    path = os.path.join(self.directory, BEST_FILE)
    if not os.path.exists(path):
      return None
    best = read_json(path, "best-checkpoint record")
    if not isinstance(best, dict) or not isinstance(best.get("step"), int):
      raise ValueError(f"{path} must hold {{\"step\": N, ...}}; found {best!r:.200}.")
    return best

  def restore(self, checkpoint: tf.train.Checkpoint) -> Optional[dict]:
    """Restores the newest checkpoint that loads; returns its state dict, or None if the
    workdir has none. Raises RuntimeError if there are checkpoints but none loads."""
    steps = self.steps()
    errors = []
    for step in reversed(steps):
      try:
        with open(os.path.join(self.path(step), STATE_FILE)) as f:
          state = json.load(f)
        checkpoint.read(self.prefix(step)).assert_existing_objects_matched()
      except Exception as e:  # pylint: disable=broad-except
        # Whatever a damaged file raises (OpError, IndexError, DataLossError, ...): try older.
        logging.warning("Checkpoint %s does not load (%s); trying the one before.",
                        self.path(step), str(e).splitlines()[0][:300])
        errors.append(f"{self.path(step)}: {str(e).splitlines()[0][:300]}")
        continue
      logging.info("Restored %s.", self.path(step))
      return state
    if errors:
      raise RuntimeError(
          "No checkpoint in the workdir loads, so the run cannot resume (it will not silently "
          "start again from step 0). Pass --resume=false to start afresh (the checkpoints are "
          "moved aside), or use another --workdir. Errors:\n  " + "\n  ".join(errors))
    return None

  # Writing. ------------------------------------------------------------------------------------

  def clean_partial(self) -> None:
    """Removes what a process killed while writing left behind (chief only)."""
    if not self.is_chief or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      path = os.path.join(self.directory, name)
      # Only what save() makes: its name pattern, a real folder (not a link), holding only
      # checkpoint files. Anything else under .tmp-* is not ours and stays.
      if not (_TMP_RE.match(name) and os.path.isdir(path) and not os.path.islink(path)):
        continue
      contents = os.listdir(path)
      if not all(n == STATE_FILE or n.startswith(PREFIX + ".") or n == "checkpoint"
                 for n in contents) or any(os.path.isdir(os.path.join(path, n))
                                           for n in contents):
        logging.warning("Leaving %s: it is named like an interrupted checkpoint but holds "
                        "other files.", path)
        continue
      logging.warning("Removing %s, a checkpoint whose writing was interrupted.", name)
      for n in contents:
        os.remove(os.path.join(path, n))
      os.rmdir(path)

  def save(self, checkpoint: tf.train.Checkpoint, step: int, state: dict,
           best: Optional[dict] = None) -> Optional[str]:
    """Writes checkpoint + state as step-<step>, atomically; `best` (a dict with the
    validation error) marks it as the best so far. Returns its path (None if not chief)."""
    os.makedirs(self.directory, exist_ok=True)
    final = self.path(step)
    if not self.is_chief:
      tmp = tempfile.mkdtemp(dir=self.directory, prefix=f"{_TMP}worker{self.worker_id}-")
      try:
        checkpoint.write(os.path.join(tmp, PREFIX))
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
      return None
    if not os.path.exists(final):
      tmp = tempfile.mkdtemp(dir=self.directory, prefix=f"{_TMP}step-{step:08d}-")
      try:
        checkpoint.write(os.path.join(tmp, PREFIX))
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
          json.dump(state, f, indent=2, sort_keys=True)
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, final)
      except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if best is not None:
      files.write_json(os.path.join(self.directory, BEST_FILE), {"step": step, **best})
    self._prune()
    return final

  def _prune(self):
    best = self.best()
    keep = set(self.steps()[-self.keep:])
    if best is not None:
      keep.add(int(best["step"]))
    for step in self.steps():
      if step not in keep:
        shutil.rmtree(self.path(step), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading a trained model.


def resolve(path: str, which: str):
  """(workdir, checkpoint prefix) for a workdir, a step-* folder or a prefix."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    store = CheckpointStore(path)
    steps = store.steps()
    if not steps:
      raise FileNotFoundError(f"{path} holds no checkpoint (no {CHECKPOINT_DIR}/step-* folder "
                              "with a state.json): has training saved one yet?")
    step = steps[-1]
    if which == "best":
      best = store.best()
      if best is None or int(best["step"]) not in steps:
        logging.warning("%s has no best checkpoint (no validation yet); using the latest, "
                        "step %d.", path, step)
      else:
        step = int(best["step"])
    elif which != "latest":
      raise errors.invalid("which", which, "'best' or 'latest'")
    return path, store.prefix(step)
  if os.path.isdir(path) and os.path.exists(os.path.join(path, PREFIX + ".index")):
    path = os.path.join(path, PREFIX)
  if not os.path.exists(path + ".index"):
    raise FileNotFoundError(f"{path} is neither a training workdir (with {CONFIG_FILE}) nor a "
                            "checkpoint (a prefix with a .index file).")
  workdir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE} in {workdir}, so the model it belongs "
                            f"to is unknown (expected <workdir>/{CHECKPOINT_DIR}/step-*/ckpt).")
  return workdir, path


def checkpoint_prefix(path: str, which: str = "best") -> str:
  """The checkpoint prefix load_model(path, which) would load."""
  return resolve(path, which)[1]


def load_model(path: str, which: str = "best") -> tuple:
  """(keras.Model with the checkpoint's weights, producing logits; the run's metadata).

  path: a training workdir (which: "best" by validation error, or "latest"), a step-* folder,
  or a checkpoint prefix .../checkpoints/step-*/ckpt. The metadata is config.json plus
  "workdir" and "checkpoint" (the prefix loaded).
  """
  workdir, prefix = resolve(path, which)
  metadata = read_metadata(workdir)
  model_config = model_config_from_json(metadata["model_config"])
  model = build_model(model_config, tiny=metadata.get("tiny_model", False))
  checkpoint = tf.train.Checkpoint(model=checkpointed_variables(model))
  try:
    # expect_partial: the optimizer's slots and the step counters are not needed here.
    checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(f"{prefix} does not match the model described by {workdir}/{CONFIG_FILE}: "
                     f"{str(e).splitlines()[0][:500]}") from e
  return model, {**metadata, "workdir": workdir, "checkpoint": prefix}


def initial_model(path: str) -> keras.Model:
  """The model the run in `path` (a training workdir) started from, rebuilt: its config, built
  after seeding Keras with the run's --seed, as the trainer does before building. Trained
  minus initial weights show what training changed (the demo's conv1 picture)."""
  metadata = read_metadata(path)
  train = metadata.get("train", {})
  if train.get("init_checkpoint"):
    raise ValueError(f"{path} started from --init_checkpoint={train['init_checkpoint']}, not "
                     "from its seed; load that checkpoint instead.")
  keras.utils.set_random_seed(train.get("seed", 0))
  return build_model(model_config_from_json(metadata["model_config"]),
                     tiny=metadata.get("tiny_model", False))
