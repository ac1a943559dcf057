"""Flags of `python -m keras_alexnet.train` and `python -m keras_alexnet.evaluate`, and the
plain config objects they become.

All absl flag definitions for training and evaluation live here. The entry points call
`define_train_flags()` / `define_evaluate_flags()` at import, parse, then turn the flags into a
`Config` once with `config_from_flags(FLAGS)`; nothing below the entry points reads FLAGS.
Defaults are the paper's recipe (section 5); flags/paper.cfg spells them out.
"""

import dataclasses
from typing import Optional, Tuple

from absl import flags

from keras_alexnet import dataset as dataset_lib
from keras_alexnet import distribute
from keras_alexnet import errors
from keras_alexnet import model as model_lib
from keras_alexnet import optimizer as optimizer_lib
from keras_alexnet import preprocessing

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("plateau", "step")
LR_SCALINGS = ("linear", "none")
VIEWS = ("center", "ten")
# Section 5: "batch size of 128 examples"; the learning rate 0.01 belongs to this batch.
PAPER_BATCH_SIZE = 128
PAPER_EPOCHS = 90
# --trainable_from: the paper's layers in order (Figure 2); conv2 means conv2_a and conv2_b.
TRAINABLE_FROM = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc6", "fc7", "fc8")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train; defaults are the paper's recipe (section 5)."""
  batch_size: int = PAPER_BATCH_SIZE    # Global: per-replica batch x replicas.
  epochs: int = PAPER_EPOCHS
  learning_rate: float = optimizer_lib.LEARNING_RATE   # At the reference batch of 128.
  lr_scaling: str = "linear"            # "linear": lr x batch_size / 128; "none": as given.
  momentum: float = optimizer_lib.MOMENTUM
  weight_decay: float = optimizer_lib.WEIGHT_DECAY
  decay_biases: bool = False
  schedule: optimizer_lib.ScheduleConfig = optimizer_lib.ScheduleConfig()
  steps_per_epoch: int = 0              # 0: the whole training split; else at most this many.
  eval_steps: int = 0                   # 0: the whole validation split.
  checkpoint_every_steps: int = 1000
  keep_checkpoints: int = 3
  resume: bool = True
  strategy: str = "one_device"
  devices: Tuple[str, ...] = ()
  precision: str = "float32"
  xla: bool = False
  seed: int = 0
  deterministic: bool = False
  log_every_steps: int = 100
  summary_images: bool = True
  collective_timeout: float = 0.0       # Seconds; 0: TF's default (multi_worker only).
  tiny_model: bool = False              # Tests only: see workdir.build_model.
  init_checkpoint: Optional[str] = None  # Fine-tuning: weights of a workdir or checkpoint.
  trainable_from: Optional[str] = None  # Layers before this one are frozen; None: none.
  # Seconds the trainer waits for one batch (e.g. from tf.data service workers that died)
  # before it saves a checkpoint and fails; 0: wait for ever.
  data_timeout: float = 300.0

  def peak_learning_rate(self) -> float:
    """The rate at the start of training, after scaling with the global batch."""
    if self.lr_scaling == "linear":
      return self.learning_rate * self.batch_size / PAPER_BATCH_SIZE
    return self.learning_rate


@dataclasses.dataclass(frozen=True)
class Config:
  model: model_lib.ModelConfig          # num_classes None: from the dataset.
  data: dataset_lib.DataConfig
  augment: preprocessing.AugmentConfig
  train: TrainConfig


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  workdirs: Tuple[str, ...] = ()
  checkpoint: Optional[str] = None      # A checkpoint prefix instead of workdirs.
  which: str = "best"                   # "best" | "latest" checkpoint of each workdir.
  data_dir: Optional[str] = None        # None: the data_dir the (first) run trained on.
  views: Tuple[str, ...] = VIEWS
  batch_size: int = PAPER_BATCH_SIZE
  eval_steps: int = 0
  output: Optional[str] = None          # JSON path; None: <first workdir>/evaluation.json.
  split: str = "validation"             # "test": ILSVRC-2010's test split (Table 1).


def check_train_config(config: Config) -> None:
  """Raises ValueError naming the first bad setting; touches nothing."""
  t = config.train

  def bad(what, got, allowed):
    raise errors.invalid(f"--{what}", got, allowed)
  if t.strategy not in distribute.STRATEGIES:
    bad("strategy", t.strategy, f"one of {distribute.STRATEGIES}")
  if t.precision not in PRECISIONS:
    bad("precision", t.precision, f"one of {PRECISIONS}")
  if t.lr_scaling not in LR_SCALINGS:
    bad("lr_scaling", t.lr_scaling, f"one of {LR_SCALINGS}")
  if t.schedule.kind not in LR_SCHEDULES:
    bad("lr_schedule", t.schedule.kind, f"one of {LR_SCHEDULES}")
  for name in ("batch_size", "epochs", "checkpoint_every_steps", "keep_checkpoints",
               "log_every_steps"):
    if getattr(t, name) < 1:
      bad(name, getattr(t, name), "an integer >= 1")
  for name in ("steps_per_epoch", "eval_steps"):
    if getattr(t, name) < 0:
      bad(name, getattr(t, name), "an integer >= 0 (0: the whole split)")
  if not t.learning_rate > 0:
    bad("learning_rate", t.learning_rate, "> 0")
  if t.schedule.patience < 1:
    bad("plateau_patience", t.schedule.patience, "an integer >= 1 (epochs)")
  if not 0 <= t.schedule.max_drops:
    bad("max_lr_drops", t.schedule.max_drops, ">= 0")
  if t.strategy == "two_tower" and config.model.variant != "paper":
    bad("variant", config.model.variant, "'paper' with --strategy=two_tower (only the paper's "
        "net has two towers)")
  if t.strategy == "two_tower" and t.devices and len(t.devices) != 2:
    bad("devices", list(t.devices), "exactly two devices with --strategy=two_tower")
  if t.strategy == "multi_worker" and t.devices:
    bad("devices", list(t.devices), "empty with --strategy=multi_worker (it uses the local "
        "GPUs, or the CPU, of every worker in TF_CONFIG)")
  if t.xla and t.deterministic:
    bad("xla", t.xla, "False with --deterministic (XLA has no deterministic max-pooling "
        "gradient; TF fails with UNIMPLEMENTED)")
  if t.collective_timeout < 0:
    bad("collective_timeout", t.collective_timeout, ">= 0 seconds")
  if t.trainable_from == "conv6" and not config.model.conv6:
    bad("trainable_from", t.trainable_from, "a layer of the model: conv6 exists only with "
        "--conv6")
  if t.data_timeout < 0:
    bad("data_timeout", t.data_timeout, ">= 0 seconds (0: wait for ever)")
  if t.tiny_model and t.strategy == "two_tower":
    bad("tiny_model", t.tiny_model, "False with --strategy=two_tower")
  # The tiny test net has other layer names; training checks against the model itself.
  if t.trainable_from and not t.tiny_model and t.trainable_from not in TRAINABLE_FROM:
    bad("trainable_from", t.trainable_from, f"one of {TRAINABLE_FROM} (conv2 means conv2_a "
        "and conv2_b; the layers before it are frozen)")


# ---------------------------------------------------------------------------------------------
# Flags.

_DEFINED = set()   # (id of the FlagValues, group) already defined.
FLAG_NAMES = []   # In definition order: what flags.txt records.


def _once(group):
  def wrap(define):
    def run(fv):
      if (id(fv), group) not in _DEFINED:
        _DEFINED.add((id(fv), group))
        names = define(fv)
        FLAG_NAMES.extend(n for n in names if n not in FLAG_NAMES)
    return run
  return wrap


def _names(*holders):
  return [h.name for h in holders]


class _Definer:
  """d.DEFINE_string(...) is flags.DEFINE_string(..., flag_values=fv)."""

  def __init__(self, fv):
    self._fv = fv

  def __getattr__(self, name):
    define = getattr(flags, name)
    return lambda *args, **kwargs: define(*args, flag_values=self._fv, **kwargs)


@_once("data")
def _define_data_flags(fv):
  d = _Definer(fv)
  return _names(
      d.DEFINE_string("data_dir", None, "Folder of TFRecord shards and dataset_info.json, "
                          "made by `python -m tfrecords.build --input=... --output_dir=...`."),
      d.DEFINE_enum("data_format", "auto", ("auto",) + dataset_lib.FORMATS,
                        "Shard layout; auto: from dataset_info.json / the records."),
      d.DEFINE_integer("label_offset", None, "Subtracted from stored labels; default: from "
                           "dataset_info.json or the format."),
      d.DEFINE_integer("shuffle_buffer", 10_000, "Examples in the shuffle buffer."),
      d.DEFINE_integer("private_threadpool_size", 0,
                           "tf.data threads; 0: TF's shared pool."),
      d.DEFINE_bool("cache", False, "Keep decoded images in memory after the first epoch."),
      d.DEFINE_string("data_service_address", None,
                          "grpc://HOST:PORT of a tf.data service dispatcher."),
      d.DEFINE_bool("synthetic", False, "Random images, no files (for benchmarks)."),
      d.DEFINE_integer("batch_size", PAPER_BATCH_SIZE,
                           "Global batch (per-replica batch x replicas); section 5: 128."),
      d.DEFINE_integer("eval_steps", 0, "Validation batches; 0: the whole split."),
  )


@_once("train")
def _define_train_flags(fv):
  d = _Definer(fv)
  m, a = model_lib.ModelConfig(), preprocessing.AugmentConfig()
  t, s = TrainConfig(), optimizer_lib.ScheduleConfig()
  return _names(
      d.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events, config.json "
                          "and flags.txt go. Rerunning with the same workdir resumes."),
      # Model (keras_alexnet.model.ModelConfig): the paper's ablation switches.
      d.DEFINE_integer("num_classes", None, "Default: the dataset's. If given it must match."),
      d.DEFINE_enum("variant", m.variant, model_lib.VARIANTS, "paper: two towers with LRN; "
                        "one_tower: Krizhevsky 2014 widths, no LRN."),
      d.DEFINE_enum("activation", m.activation, model_lib.ACTIVATIONS, "Section 3.1."),
      d.DEFINE_bool("lrn", m.lrn, "Local response normalization (section 3.3)."),
      d.DEFINE_enum("pooling", m.pooling, model_lib.POOLINGS, "Section 3.4."),
      d.DEFINE_float("dropout", m.dropout, "Dropout rate in fc6/fc7 (section 4.2); 0: off."),
      d.DEFINE_list("remove", list(m.remove), "Conv layers to remove (section 7), any of "
                        f"{', '.join(model_lib.REMOVABLE_LAYERS)}."),
      d.DEFINE_enum("init", m.init, model_lib.INITS, "paper: N(0, 0.01), biases 1/0."),
      d.DEFINE_float("input_scale", m.input_scale, "Multiplies the mean-subtracted 0..255 "
                     "inputs inside the model; 1 is the paper. He init assumes unit-variance "
                     "inputs: 1/64 makes them about so (see flags/demo.cfg)."),
      d.DEFINE_bool("conv6", m.conv6, "Section 6's extra sixth conv layer over pool5 (3x3, "
                    "256 maps, within towers): the '1 CNN*' of Table 2."),
      # Augmentation (keras_alexnet.preprocessing.AugmentConfig), section 4.1.
      d.DEFINE_bool("random_crop", a.random_crop, "Random 224 crops (else the centre)."),
      d.DEFINE_bool("mirror", a.mirror, "Horizontal reflections."),
      d.DEFINE_bool("pca_lighting", a.pca_lighting, "The PCA colour augmentation."),
      d.DEFINE_enum("mean", a.mean, preprocessing.MEANS, "Mean subtracted from inputs."),
      # Optimization, section 5.
      d.DEFINE_integer("epochs", t.epochs, "Passes over the training split."),
      d.DEFINE_float("learning_rate", t.learning_rate, "Initial rate at a global batch of "
                         f"{PAPER_BATCH_SIZE} (see --lr_scaling)."),
      d.DEFINE_enum("lr_scaling", t.lr_scaling, LR_SCALINGS,
                        f"linear: the rate is learning_rate x batch_size / {PAPER_BATCH_SIZE}."),
      d.DEFINE_float("momentum", t.momentum, "Momentum of the update."),
      d.DEFINE_float("weight_decay", t.weight_decay, "Decay inside the update: "
                         "v <- m v - wd eps w - eps dL/dw."),
      d.DEFINE_bool("decay_biases", t.decay_biases, "Also decay biases."),
      d.DEFINE_enum("lr_schedule", s.kind, LR_SCHEDULES, "plateau: divide by 10 when the "
                        "validation error stops improving (the paper); step: at --step_epochs."),
      d.DEFINE_integer("plateau_patience", s.patience,
                           "Epochs without a lower validation error before dividing by 10."),
      d.DEFINE_float("plateau_min_delta", s.min_delta,
                         "An improvement smaller than this (error fraction) does not count."),
      d.DEFINE_integer("max_lr_drops", s.max_drops, "At most this many divisions by 10."),
      d.DEFINE_list("step_epochs", [str(e) for e in s.step_epochs],
                        "Epochs at which --lr_schedule=step divides the rate by 10."),
      d.DEFINE_integer("steps_per_epoch", t.steps_per_epoch,
                           "0: the whole training split; else at most this many steps."),
      # Runs that survive.
      d.DEFINE_integer("checkpoint_every_steps", t.checkpoint_every_steps,
                           "Also checkpoint at every epoch end and on SIGTERM/SIGINT."),
      d.DEFINE_integer("keep_checkpoints", t.keep_checkpoints,
                           "Newest checkpoints kept (the best one is kept besides)."),
      d.DEFINE_bool("resume", t.resume, "Continue from the workdir's last checkpoint; "
                        "false: start fresh (old checkpoints are moved aside, not deleted)."),
      # Hardware.
      # The flag's default is auto (the hardware at hand); a TrainConfig built in code keeps
      # one_device, so library callers see no change.
      d.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                        "auto (two_tower on exactly two GPUs, "
                        "mirrored on more, else one_device; never multi_worker) | one_device | "
                        "mirrored (local GPUs or --devices) | multi_worker (TF_CONFIG) | "
                        "two_tower (the paper's split of the towers over two devices)."),
      d.DEFINE_list("devices", list(t.devices), "Devices for the strategy, e.g. "
                        "/gpu:0,/gpu:1; default: the local GPUs, or the CPU."),
      d.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into this many logical devices "
                           "first (to try mirrored/two_tower on a machine without GPUs)."),
      d.DEFINE_enum("precision", t.precision, PRECISIONS,
                        "mixed_float16 uses dynamic loss scaling; LRN stays float32."),
      d.DEFINE_bool("xla", t.xla, "Compile the forward and backward pass with XLA."),
      d.DEFINE_float("collective_timeout", t.collective_timeout, "multi_worker: seconds a "
                         "collective may wait for a peer; 0: TF's default."),
      d.DEFINE_float("data_timeout", t.data_timeout, "Seconds to wait for one input batch "
                     "(e.g. from dead tf.data service workers) before saving a checkpoint "
                     "and failing; 0: wait for ever."),
      d.DEFINE_integer("seed", t.seed, "Seeds init, data order, augmentation, dropout."),
      d.DEFINE_bool("deterministic", t.deterministic, "Deterministic ops and data order: "
                        "a resumed run repeats an uninterrupted one's losses. Slower."),
      d.DEFINE_integer("log_every_steps", t.log_every_steps,
                           "Steps between log lines and TensorBoard training scalars."),
      d.DEFINE_bool("summary_images", t.summary_images, "TensorBoard images: conv1 "
                        "kernels (Figure 3) and augmented inputs, each epoch."),
      # Fine-tuning.
      d.DEFINE_string("init_checkpoint", None, "Start from the weights of this workdir (its "
                          "best checkpoint) or checkpoint prefix; fc8 is re-initialised when "
                          "the classes differ. Ignored when resuming the workdir's own run."),
      d.DEFINE_string("trainable_from", None, "Freeze the layers before this one, one of "
                          f"{', '.join(TRAINABLE_FROM)}; default: train all."),
      d.DEFINE_bool("tiny_model", False, "Tests only: a two-layer convnet in place of "
                        "AlexNet, to exercise the training machinery quickly."),
  )


@_once("evaluate")
def _define_evaluate_flags(fv):
  d = _Definer(fv)
  e = EvalConfig()
  return _names(
      d.DEFINE_list("workdirs", [], "Training workdirs; several: their ensemble too "
                        "(softmax averaged, the paper's '5 CNNs')."),
      d.DEFINE_string("checkpoint", None, "A checkpoint prefix (.../ckpt) instead."),
      d.DEFINE_enum("which", e.which, ("best", "latest"), "Checkpoint of each workdir."),
      d.DEFINE_list("views", list(e.views), "center: the centre crop; ten: the 10 views "
                        "of section 4.1, softmax averaged."),
      d.DEFINE_string("output", None, "Results JSON; default: evaluation.json in the "
                          "first workdir (or beside the checkpoint)."),
      d.DEFINE_enum("split", e.split, ("validation", "test"), "The split evaluated; test: "
                        "ILSVRC-2010's (Table 1), built by tfrecords.build --layout=ilsvrc2010."),
  )


def define_train_flags(fv: flags.FlagValues = flags.FLAGS):
  """Defines train's flags in `fv` (once); the entry point calls it when run as a command."""
  _define_data_flags(fv)
  _define_train_flags(fv)


def define_evaluate_flags(fv: flags.FlagValues = flags.FLAGS):
  _define_data_flags(fv)
  _define_evaluate_flags(fv)


def data_config_from_flags(f: flags.FlagValues, **overrides) -> dataset_lib.DataConfig:
  return dataset_lib.DataConfig(**{
      "data_dir": f.data_dir, "format": f.data_format, "label_offset": f.label_offset,
      "shuffle_buffer": f.shuffle_buffer, "private_threadpool_size": f.private_threadpool_size,
      "cache": f.cache, "data_service_address": f.data_service_address,
      "synthetic": f.synthetic, **overrides})


def _ints(values, name):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of integers; received "
                     f"{','.join(values)!r}.") from None


def config_from_flags(f: flags.FlagValues) -> Config:
  """The training Config from parsed flags (validated; raises ValueError)."""
  if not f.data_dir and not f.synthetic:
    raise ValueError("--data_dir is required: a folder of TFRecord shards made by "
                     f"`{dataset_lib.BUILD_COMMAND}`.")
  if not f.workdir:
    raise ValueError("--workdir is required: where checkpoints and TensorBoard events go.")
  model = model_lib.ModelConfig(
      num_classes=f.num_classes, variant=f.variant, activation=f.activation, lrn=f.lrn,
      pooling=f.pooling, dropout=f.dropout, remove=tuple(f.remove), init=f.init,
      input_scale=f.input_scale, conv6=f.conv6)
  augment = preprocessing.AugmentConfig(
      random_crop=f.random_crop, mirror=f.mirror, pca_lighting=f.pca_lighting, mean=f.mean)
  schedule = optimizer_lib.ScheduleConfig(
      kind=f.lr_schedule, patience=f.plateau_patience, min_delta=f.plateau_min_delta,
      max_drops=f.max_lr_drops, step_epochs=_ints(f.step_epochs, "step_epochs"))
  train = TrainConfig(
      batch_size=f.batch_size, epochs=f.epochs, learning_rate=f.learning_rate,
      lr_scaling=f.lr_scaling, momentum=f.momentum, weight_decay=f.weight_decay,
      decay_biases=f.decay_biases, schedule=schedule, steps_per_epoch=f.steps_per_epoch,
      eval_steps=f.eval_steps, checkpoint_every_steps=f.checkpoint_every_steps,
      keep_checkpoints=f.keep_checkpoints, resume=f.resume, strategy=f.strategy,
      devices=tuple(f.devices), precision=f.precision, xla=f.xla, seed=f.seed,
      deterministic=f.deterministic, log_every_steps=f.log_every_steps,
      summary_images=f.summary_images, collective_timeout=f.collective_timeout,
      tiny_model=f.tiny_model, init_checkpoint=f.init_checkpoint or None,
      trainable_from=f.trainable_from or None, data_timeout=f.data_timeout)
  data = data_config_from_flags(f, deterministic=f.deterministic, seed=f.seed,
                                num_classes=f.num_classes)
  config = Config(model=model, data=data, augment=augment,
                  train=train)
  check_train_config(config)
  return config


def eval_config_from_flags(f: flags.FlagValues) -> EvalConfig:
  if bool(f.workdirs) == bool(f.checkpoint):
    raise ValueError("give either --workdirs=DIR[,DIR...] (several: also their ensemble) or "
                     "--checkpoint=PREFIX; received "
                     f"workdirs={list(f.workdirs)!r}, checkpoint={f.checkpoint!r}.")
  views = tuple(f.views)
  if not views or any(v not in VIEWS for v in views):
    raise ValueError(f"--views must be a non-empty subset of {VIEWS}; received {list(views)}.")
  if f.batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1; received {f.batch_size}.")
  return EvalConfig(workdirs=tuple(f.workdirs), checkpoint=f.checkpoint, which=f.which,
                    data_dir=f.data_dir, views=views, batch_size=f.batch_size,
                    eval_steps=f.eval_steps, output=f.output, split=f.split)


def flags_text(f: flags.FlagValues, argv=()) -> str:
  """The flags in effect as a flagfile: rerunning with --flagfile=it repeats the run."""
  lines = ["# The flags in effect for this run (a flagfile)."]
  if argv:
    lines.append("# Command: " + " ".join(argv))
  for name in FLAG_NAMES:
    if name in f:
      # An unset flag (None) has no flagfile form; it stays at its default.
      lines.append(f[name].serialize() or f"# --{name} unset")
  return "\n".join(lines) + "\n"
