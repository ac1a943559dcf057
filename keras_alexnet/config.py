"""The settings of `python -m keras_alexnet.train` and `python -m keras_alexnet.evaluate`:
their absl flags and the plain config objects they become.

Each flag is written once, as a row of DATA_FLAGS / TRAIN_FLAGS / EVALUATE_FLAGS: its name,
the config fields it sets, its help; its type and default are the field's. The entry points
call `define_train_flags()` / `define_evaluate_flags()` when run as commands, parse, then turn
the flags into a `Config` once with `config_from_flags(FLAGS)`; nothing below the entry points
reads FLAGS. Defaults are the paper's recipe (section 5); flags/paper.cfg spells them out.
Imports the modules of the configs it combines (model, dataset, preprocessing, optimizer).
"""

import collections.abc
import dataclasses
import typing
from typing import Any, NamedTuple, Optional, Tuple

from absl import flags

from keras_alexnet import cpu_kernels
from keras_alexnet import data_sources
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
  # When training takes keras_alexnet.cpu_kernels' speed-ups: auto (on a machine without GPUs
  # or TPUs, where they were measured to win), on, off (TF's own ops and gradients).
  cpu_kernels: str = "auto"

  def peak_learning_rate(self) -> float:
    """The rate at the start of training, after scaling with the global batch."""
    if self.lr_scaling == "linear":
      return self.learning_rate * self.batch_size / PAPER_BATCH_SIZE
    return self.learning_rate


@dataclasses.dataclass(frozen=True)
class Config:
  model: model_lib.ModelConfig          # num_classes None: from the dataset.
  data: data_sources.DataConfig
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
  if config.data.decode_crop:
    # The pipeline option yields 224x224 windows and their offsets (for
    # preprocessing.augment_crops); the trainer's step takes the 256x256 images it crops itself.
    raise errors.invalid("DataConfig.decode_crop", True,
                         "False for training (a pipeline option for benchmarks and custom loops; "
                         "it gained nothing per core here, BUILD_NOTES)")
  if t.cpu_kernels not in cpu_kernels.MODES:
    bad("cpu_kernels", t.cpu_kernels, f"one of {cpu_kernels.MODES}")
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
# Flags: each written once, in the tables below. A flag's type and default are those of the
# config field it sets (Config: "model.variant", "train.schedule.patience"; EvalConfig:
# "eval.which"); its row adds the help text, the choices of an enum, and the --help heading.

# The headings of `python -m keras_alexnet.train --help`, in flags/paper.cfg's order.
DATA = "Data"
MODEL = "Model (section 3)"
AUGMENTATION = "Augmentation (section 4.1)"
OPTIMIZATION = "Optimization (section 5)"
FINE_TUNING = "Fine-tuning"
HARDWARE = "Hardware and bookkeeping"
HELP_HEADINGS = (DATA, MODEL, AUGMENTATION, OPTIMIZATION, FINE_TUNING, HARDWARE)

_FIELD_DEFAULT = object()   # Flag.default unset: the field's.


class Flag(NamedTuple):
  """One flag. Its type (bool, int, float, str, list) and default are those of its first
  field, from the dataclass; the row says only what the field cannot."""
  name: str
  fields: str                # The field paths it sets, space-separated; "": none.
  heading: Optional[str]     # Its heading in train's --help; None: "Other flags".
  help: str
  choices: Optional[Tuple[str, ...]] = None   # An enum flag's values.
  default: Any = _FIELD_DEFAULT               # Where the flag's default is not the field's.
  kind: Optional[type] = None                 # The type of a flag that sets no field.
  blank_is_none: bool = False                 # "--flag=" clears a flagfile's value to None.


# Shared by train and evaluate.
DATA_FLAGS = (
    Flag("data_dir", "data.data_dir eval.data_dir", DATA, "Folder of TFRecord shards and "
         "dataset_info.json, made by `python -m tfrecords.build --input=... --output_dir=...`.",
         default=None),
    Flag("data_format", "data.format", DATA, "Shard layout; auto: from dataset_info.json / "
         "the records.", choices=("auto",) + data_sources.FORMATS),
    Flag("label_offset", "data.label_offset", DATA, "Subtracted from stored labels; default: "
         "from dataset_info.json or the format."),
    Flag("shuffle_buffer", "data.shuffle_buffer", DATA, "Examples in the shuffle buffer."),
    Flag("private_threadpool_size", "data.private_threadpool_size", DATA,
         "tf.data threads; 0: TF's shared pool."),
    Flag("cache", "data.cache", DATA, "Keep decoded images in memory after the first epoch."),
    Flag("data_service_address", "data.data_service_address", DATA,
         "grpc://HOST:PORT of a tf.data service dispatcher."),
    Flag("synthetic", "data.synthetic", DATA, "Random images, no files (for benchmarks)."),
    Flag("batch_size", "train.batch_size eval.batch_size", DATA,
         "Global batch (per-replica batch x replicas); section 5: 128."),
    Flag("eval_steps", "train.eval_steps eval.eval_steps", DATA,
         "Validation batches; 0: the whole split."),
)

TRAIN_FLAGS = (
    Flag("workdir", "", HARDWARE, "Where checkpoints, TensorBoard events, config.json and "
         "flags.txt go. Rerunning with the same workdir resumes.", default=None, kind=str),
    # keras_alexnet.model.ModelConfig: the paper's ablation switches.
    Flag("num_classes", "model.num_classes data.num_classes", MODEL,
         "Default: the dataset's. If given it must match.", default=None),
    Flag("variant", "model.variant", MODEL, "paper: two towers with LRN; one_tower: Krizhevsky "
         "2014 widths, no LRN.", choices=model_lib.VARIANTS),
    Flag("activation", "model.activation", MODEL, "Section 3.1.", choices=model_lib.ACTIVATIONS),
    Flag("lrn", "model.lrn", MODEL, "Local response normalization (section 3.3)."),
    Flag("pooling", "model.pooling", MODEL, "Section 3.4.", choices=model_lib.POOLINGS),
    Flag("dropout", "model.dropout", MODEL, "Dropout rate in fc6/fc7 (section 4.2); 0: off."),
    Flag("remove", "model.remove", MODEL, "Conv layers to remove (section 7), any of "
         f"{', '.join(model_lib.REMOVABLE_LAYERS)}."),
    Flag("init", "model.init", MODEL, "paper: N(0, 0.01), biases 1/0.", choices=model_lib.INITS),
    Flag("input_scale", "model.input_scale", MODEL, "Multiplies the mean-subtracted 0..255 "
         "inputs inside the model; 1 is the paper. He init assumes unit-variance inputs: 1/64 "
         "makes them about so (see flags/demo.cfg)."),
    Flag("conv6", "model.conv6", MODEL, "Section 6's extra sixth conv layer over pool5 (3x3, "
         "256 maps, within towers): the '1 CNN*' of Table 2."),
    # keras_alexnet.preprocessing.AugmentConfig, section 4.1.
    Flag("random_crop", "augment.random_crop", AUGMENTATION,
         "Random 224 crops (else the centre)."),
    Flag("mirror", "augment.mirror", AUGMENTATION, "Horizontal reflections."),
    Flag("pca_lighting", "augment.pca_lighting", AUGMENTATION, "The PCA colour augmentation."),
    Flag("mean", "augment.mean", AUGMENTATION, "Mean subtracted from inputs.",
         choices=preprocessing.MEANS),
    # Section 5.
    Flag("epochs", "train.epochs", OPTIMIZATION, "Passes over the training split."),
    Flag("learning_rate", "train.learning_rate", OPTIMIZATION, "Initial rate at a global batch "
         f"of {PAPER_BATCH_SIZE} (see --lr_scaling)."),
    Flag("lr_scaling", "train.lr_scaling", OPTIMIZATION, "linear: the rate is learning_rate x "
         f"batch_size / {PAPER_BATCH_SIZE}.", choices=LR_SCALINGS),
    Flag("momentum", "train.momentum", OPTIMIZATION, "Momentum of the update."),
    Flag("weight_decay", "train.weight_decay", OPTIMIZATION, "Decay inside the update: "
         "v <- m v - wd eps w - eps dL/dw."),
    Flag("decay_biases", "train.decay_biases", OPTIMIZATION, "Also decay biases."),
    Flag("lr_schedule", "train.schedule.kind", OPTIMIZATION, "plateau: divide by 10 when the "
         "validation error stops improving (the paper); step: at --step_epochs.",
         choices=LR_SCHEDULES),
    Flag("plateau_patience", "train.schedule.patience", OPTIMIZATION,
         "Epochs without a lower validation error before dividing by 10."),
    Flag("plateau_min_delta", "train.schedule.min_delta", OPTIMIZATION,
         "An improvement smaller than this (error fraction) does not count."),
    Flag("max_lr_drops", "train.schedule.max_drops", OPTIMIZATION,
         "At most this many divisions by 10."),
    Flag("step_epochs", "train.schedule.step_epochs", OPTIMIZATION,
         "Epochs at which --lr_schedule=step divides the rate by 10."),
    Flag("steps_per_epoch", "train.steps_per_epoch", OPTIMIZATION,
         "0: the whole training split; else at most this many steps."),
    # Runs that survive.
    Flag("checkpoint_every_steps", "train.checkpoint_every_steps", HARDWARE,
         "Also checkpoint at every epoch end and on SIGTERM/SIGINT."),
    Flag("keep_checkpoints", "train.keep_checkpoints", HARDWARE,
         "Newest checkpoints kept (the best one is kept besides)."),
    Flag("resume", "train.resume", HARDWARE, "Continue from the workdir's last checkpoint; "
         "false: start fresh (old checkpoints are moved aside, not deleted)."),
    # The flag's default is auto (the hardware at hand); a TrainConfig built in code keeps
    # one_device, so library callers see no change.
    Flag("strategy", "train.strategy", HARDWARE, "auto (two_tower on exactly two GPUs, "
         "mirrored on more, else one_device; never multi_worker) | one_device | mirrored "
         "(local GPUs or --devices) | multi_worker (TF_CONFIG) | two_tower (the paper's split "
         "of the towers over two devices).", choices=distribute.STRATEGIES, default="auto"),
    Flag("devices", "train.devices", HARDWARE, "Devices for the strategy, e.g. /gpu:0,/gpu:1; "
         "default: the local GPUs, or the CPU."),
    Flag("num_cpu_devices", "", HARDWARE, "Split the CPU into this many logical devices first "
         "(to try mirrored/two_tower on a machine without GPUs).", default=0, kind=int),
    Flag("precision", "train.precision", HARDWARE,
         "mixed_float16 uses dynamic loss scaling; LRN stays float32.", choices=PRECISIONS),
    Flag("xla", "train.xla", HARDWARE, "Compile the forward and backward pass with XLA."),
    Flag("cpu_kernels", "train.cpu_kernels", HARDWARE, "The CPU training speed-ups (fused LRN, "
         "the fc and tower-slice gradients, the fused update; keras_alexnet/cpu_kernels.py): "
         "auto (when no GPU or TPU is visible), on, off (TF's own ops). Same maths either way.",
         choices=cpu_kernels.MODES),
    Flag("collective_timeout", "train.collective_timeout", HARDWARE, "multi_worker: seconds a "
         "collective may wait for a peer; 0: TF's default."),
    Flag("data_timeout", "train.data_timeout", DATA, "Seconds to wait for one input batch "
         "(e.g. from dead tf.data service workers) before saving a checkpoint and failing; 0: "
         "wait for ever."),
    Flag("seed", "train.seed data.seed", HARDWARE,
         "Seeds init, data order, augmentation, dropout."),
    Flag("deterministic", "train.deterministic data.deterministic", HARDWARE, "Deterministic "
         "ops and data order: a resumed run repeats an uninterrupted one's losses. Slower."),
    Flag("log_every_steps", "train.log_every_steps", HARDWARE,
         "Steps between log lines and TensorBoard training scalars."),
    Flag("summary_images", "train.summary_images", HARDWARE, "TensorBoard images: conv1 "
         "kernels (Figure 3) and augmented inputs, each epoch."),
    Flag("init_checkpoint", "train.init_checkpoint", FINE_TUNING, "Start from the weights of "
         "this workdir (its best checkpoint) or checkpoint prefix; fc8 is re-initialised when "
         "the classes differ. Ignored when resuming the workdir's own run.", blank_is_none=True),
    Flag("trainable_from", "train.trainable_from", FINE_TUNING, "Freeze the layers before this "
         f"one, one of {', '.join(TRAINABLE_FROM)}; default: train all.", blank_is_none=True),
    Flag("tiny_model", "train.tiny_model", None, "Tests only: a two-layer convnet in place of "
         "AlexNet, to exercise the training machinery quickly."),
)

EVALUATE_FLAGS = (
    Flag("workdirs", "eval.workdirs", None, "Training workdirs; several: their ensemble too "
         "(softmax averaged, the paper's '5 CNNs')."),
    Flag("checkpoint", "eval.checkpoint", None, "A checkpoint prefix (.../ckpt) instead."),
    Flag("which", "eval.which", None, "Checkpoint of each workdir.",
         choices=("best", "latest")),
    Flag("views", "eval.views", None, "center: the centre crop; ten: the 10 views of section "
         "4.1, softmax averaged."),
    Flag("output", "eval.output", None, "Results JSON; default: evaluation.json in the first "
         "workdir (or beside the checkpoint)."),
    Flag("split", "eval.split", None, "The split evaluated; test: ILSVRC-2010's (Table 1), "
         "built by tfrecords.build --layout=ilsvrc2010.", choices=("validation", "test")),
)

FLAG_NAMES = tuple(f.name for f in DATA_FLAGS + TRAIN_FLAGS + EVALUATE_FLAGS)  # flags.txt order
# train's --help: its flags under paper.cfg's headings.
TRAIN_HELP_GROUPS = tuple((heading, tuple(f.name for f in DATA_FLAGS + TRAIN_FLAGS
                                          if f.heading == heading)) for heading in HELP_HEADINGS)


def _field(path: str):
  """(type, default) of the dataclass field at `path`; "eval." paths are EvalConfig's."""
  cls, *names = path.split(".")
  cls = EvalConfig if cls == "eval" else typing.get_type_hints(Config)[cls]
  for name in names[:-1]:
    cls = typing.get_type_hints(cls)[name]
  default = {f.name: f.default for f in dataclasses.fields(cls)}[names[-1]]
  return typing.get_type_hints(cls)[names[-1]], default


def _kind(flag: Flag):
  """(flag type, item type of a list flag) from the field's annotation."""
  kind = flag.kind or _field(flag.fields.split()[0])[0]
  if typing.get_origin(kind) is typing.Union:   # Optional[X]
    kind = next(k for k in typing.get_args(kind) if k is not type(None))
  if typing.get_origin(kind) in (tuple, collections.abc.Sequence):   # Tuple[X, ...]
    return list, typing.get_args(kind)[0]
  return kind, None


def _default(flag: Flag):
  """The flag's default: its row's, else its first field's (a list flag's as strings)."""
  if flag.default is not _FIELD_DEFAULT:
    return flag.default
  default = _field(flag.fields.split()[0])[1]
  return [str(v) for v in default] if _kind(flag)[0] is list else default


_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string, list: flags.DEFINE_list}


def _define(fv: flags.FlagValues, table) -> None:
  for flag in table:
    # Defined before (train and evaluate share DATA_FLAGS; tests define both in one fv).
    if fv.find_module_defining_flag(flag.name) == __name__:
      continue
    if flag.choices:
      flags.DEFINE_enum(flag.name, _default(flag), flag.choices, flag.help, flag_values=fv)
    else:
      _DEFINE[_kind(flag)[0]](flag.name, _default(flag), flag.help, flag_values=fv)


def define_train_flags(fv: flags.FlagValues = flags.FLAGS):
  """Defines train's flags in `fv` (once); the entry point calls it when run as a command."""
  _define(fv, DATA_FLAGS + TRAIN_FLAGS)


def define_evaluate_flags(fv: flags.FlagValues = flags.FLAGS):
  _define(fv, DATA_FLAGS + EVALUATE_FLAGS)


def _ints(values, name):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise errors.invalid(f"--{name}", ",".join(values),
                         "a comma-separated list of integers") from None


# Field path -> the flag that sets it.
_BY_FIELD = {path: flag for flag in DATA_FLAGS + TRAIN_FLAGS + EVALUATE_FLAGS
             for path in flag.fields.split()}


def _value(flag: Flag, f: flags.FlagValues):
  """The flag's value as its field holds it."""
  value = f[flag.name].value
  kind, item = _kind(flag)
  if kind is list:
    value = _ints(value, flag.name) if item is int else tuple(value)
  return (value or None) if flag.blank_is_none else value


def _build(cls, prefix: str, f: flags.FlagValues, **overrides):
  """cls(...) from the flags in `f` that set fields under `prefix` ("train."); nested configs
  (train.schedule) likewise; fields without a flag keep their defaults."""
  kwargs = dict(overrides)
  for field in dataclasses.fields(cls):
    path, flag = prefix + field.name, _BY_FIELD.get(prefix + field.name)
    if field.name in kwargs:
      continue
    if flag and flag.name in f:
      kwargs[field.name] = _value(flag, f)
    elif any(p.startswith(path + ".") for p in _BY_FIELD):
      kwargs[field.name] = _build(typing.get_type_hints(cls)[field.name], path + ".", f)
  return cls(**kwargs)


def data_config_from_flags(f: flags.FlagValues, **overrides) -> data_sources.DataConfig:
  return _build(data_sources.DataConfig, "data.", f, **overrides)


def config_from_flags(f: flags.FlagValues) -> Config:
  """The training Config from parsed flags (validated; raises ValueError)."""
  if not f.data_dir and not f.synthetic:
    raise ValueError("--data_dir is required: a folder of TFRecord shards made by "
                     f"`{data_sources.BUILD_COMMAND}`.")
  if not f.workdir:
    raise ValueError("--workdir is required: where checkpoints and TensorBoard events go.")
  config = _build(Config, "", f)
  check_train_config(config)
  return config


def eval_config_from_flags(f: flags.FlagValues) -> EvalConfig:
  if bool(f.workdirs) == bool(f.checkpoint):
    raise ValueError("give either --workdirs=DIR[,DIR...] (several: also their ensemble) or "
                     "--checkpoint=PREFIX; received "
                     f"workdirs={list(f.workdirs)!r}, checkpoint={f.checkpoint!r}.")
  views = tuple(f.views)
  if not views or any(v not in VIEWS for v in views):
    raise errors.invalid("--views", list(views), f"a non-empty subset of {VIEWS}")
  if f.batch_size < 1:
    raise errors.invalid("--batch_size", f.batch_size, ">= 1")
  return _build(EvalConfig, "eval.", f)


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
