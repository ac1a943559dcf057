"""Flags -> Config: flagfiles with overrides, the paper's recipe in flags/paper.cfg, the record
written to the workdir, and the errors for bad settings."""

import dataclasses
import glob
import importlib
import os

from absl import flags
import pytest

from keras_alexnet import config as config_lib
from keras_alexnet import data_sources
from keras_alexnet import model
from keras_alexnet import optimizer
from keras_alexnet import preprocessing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Flags of their own: the global FLAGS belong to whatever entry point a test process imports.
FLAGS = flags.FlagValues()
config_lib.define_train_flags(FLAGS)
config_lib.define_evaluate_flags(FLAGS)


@pytest.fixture
def parse():
  def run(*args):
    FLAGS.unparse_flags()
    FLAGS(["train", *args])
    return FLAGS
  yield run
  FLAGS.unparse_flags()


def test_importing_the_entry_points_defines_no_flags():
  """Other entry points define flags like --num_classes at import; one pytest process imports
  them all, so train and evaluate define theirs only when run as commands."""
  from keras_alexnet import evaluate, train  # pylint: disable=g-import-not-at-top
  before = set(flags.FLAGS)
  for module in (evaluate, train):
    importlib.reload(module)   # Runs the module's top level again, even if imported before.
  assert set(flags.FLAGS) == before


def test_paper_cfg_is_the_papers_recipe_and_later_flags_override(parse):
  config = config_lib.config_from_flags(parse(
      f"--flagfile={ROOT}/flags/paper.cfg", "--data_dir=/data", "--workdir=/w",
      "--batch_size=256"))
  t = config.train
  # Section 5: momentum 0.9, weight decay 0.0005, eps 0.01 at batch 128, /10 on plateaus
  # (three times), 90 epochs; the override doubles the batch and (linearly) the rate.
  assert (t.momentum, t.weight_decay, t.learning_rate, t.epochs) == (0.9, 0.0005, 0.01, 90)
  assert t.batch_size == 256 and t.peak_learning_rate() == pytest.approx(0.02)
  assert t.schedule.kind == "plateau" and t.schedule.max_drops == 3
  assert t.schedule.factor == 0.1 and not t.decay_biases
  assert t.strategy == "auto" and t.precision == "float32"   # two_tower on two GPUs
  m = config.model
  assert (m.variant, m.activation, m.lrn, m.pooling, m.dropout, m.init, m.remove) == (
      "paper", "relu", True, "overlapping", 0.5, "paper", ())
  assert m.num_classes is None   # From the dataset.
  a = config.augment
  assert (a.random_crop, a.mirror, a.pca_lighting, a.mean) == (True, True, True, "per_pixel")
  assert config.data.data_dir == "/data"


def test_flags_text_is_a_flagfile_that_repeats_the_run(parse, tmp_path):
  first = config_lib.config_from_flags(parse(
      f"--flagfile={ROOT}/flags/smoke.cfg", "--data_dir=/data", "--workdir=/w",
      "--remove=conv3,conv5", "--step_epochs=10,20", "--lr_schedule=step", "--nolrn"))
  text = config_lib.flags_text(FLAGS, ["python", "-m", "keras_alexnet.train"])
  assert text.startswith("# The flags in effect") and "--remove=conv3,conv5" in text
  path = tmp_path / "flags.txt"
  path.write_text(text)
  again = config_lib.config_from_flags(parse(f"--flagfile={path}"))
  assert again == first
  assert again.model.remove == ("conv3", "conv5") and again.train.schedule.step_epochs == (10, 20)


def test_defaults_without_flagfile_are_the_paper(parse):
  t = config_lib.config_from_flags(parse("--data_dir=/d", "--workdir=/w")).train
  assert (t.batch_size, t.learning_rate, t.momentum, t.weight_decay, t.epochs) == (
      128, 0.01, 0.9, 0.0005, 90)
  assert t.strategy == "auto" and t.resume


@pytest.mark.parametrize("args, match", [
    ((), "--data_dir is required.*python -m tfrecords.build"),
    (("--data_dir=/d",), "--workdir is required"),
    (("--data_dir=/d", "--workdir=/w", "--step_epochs=10,x"), "step_epochs"),
    (("--data_dir=/d", "--workdir=/w", "--step_epochs=20,10", "--lr_schedule=step"),
     None),   # Accepted here; StepSchedule refuses it when built (test_optimizer).
    (("--data_dir=/d", "--workdir=/w", "--batch_size=0"), "batch_size must be an integer >= 1"),
    (("--data_dir=/d", "--workdir=/w", "--plateau_patience=0"), "plateau_patience"),
    (("--data_dir=/d", "--workdir=/w", "--strategy=two_tower", "--variant=one_tower"),
     "variant must be 'paper'"),
    (("--data_dir=/d", "--workdir=/w", "--strategy=two_tower", "--devices=/gpu:0"),
     "exactly two devices"),
    (("--data_dir=/d", "--workdir=/w", "--strategy=multi_worker", "--devices=/gpu:0"),
     "TF_CONFIG"),
])
def test_bad_settings_are_named(parse, args, match):
  if match is None:
    config_lib.config_from_flags(parse(*args))
    return
  with pytest.raises(ValueError, match=match):
    config_lib.config_from_flags(parse(*args))


def test_unknown_enum_values_are_refused_by_the_parser(parse):
  for bad in ("--strategy=ring", "--precision=float64", "--variant=vgg", "--cpu_kernels=fast"):
    with pytest.raises(flags.IllegalFlagValueError):
      parse("--data_dir=/d", "--workdir=/w", bad)


def test_check_train_config_on_plain_configs():
  config = config_lib.Config(model=config_lib.model_lib.ModelConfig(),
                             data=config_lib.data_sources.DataConfig("/d"),
                             augment=config_lib.preprocessing.AugmentConfig(),
                             train=config_lib.TrainConfig())
  config_lib.check_train_config(config)
  for field, value, match in (("strategy", "ring", "strategy must be one of"),
                              ("precision", "fp8", "precision must be one of"),
                              ("lr_scaling", "sqrt", "lr_scaling"),
                              ("cpu_kernels", "fast", r"--cpu_kernels must be one of \('auto'"),
                              ("learning_rate", 0.0, "learning_rate")):
    bad = dataclasses.replace(config, train=dataclasses.replace(config.train, **{field: value}))
    with pytest.raises(ValueError, match=match):
      config_lib.check_train_config(bad)


def test_decode_crop_is_refused_for_training():
  config = config_lib.Config(model=config_lib.model_lib.ModelConfig(),
                             data=config_lib.data_sources.DataConfig("/d", decode_crop=True),
                             augment=config_lib.preprocessing.AugmentConfig(),
                             train=config_lib.TrainConfig())
  with pytest.raises(ValueError, match="DataConfig.decode_crop must be False for training"):
    config_lib.check_train_config(config)


def test_cpu_kernels_flag_reaches_the_train_config(parse):
  base = ("--data_dir=/d", "--workdir=/w")
  assert config_lib.config_from_flags(parse(*base)).train.cpu_kernels == "auto"
  assert config_lib.config_from_flags(parse(*base, "--cpu_kernels=off")).train.cpu_kernels == "off"


def test_learning_rate_scaling():
  t = config_lib.TrainConfig(batch_size=512)
  assert t.peak_learning_rate() == pytest.approx(0.04)
  assert dataclasses.replace(t, lr_scaling="none").peak_learning_rate() == 0.01


def test_eval_config(parse):
  e = config_lib.eval_config_from_flags(parse("--workdirs=/a,/b", "--views=ten"))
  assert e.workdirs == ("/a", "/b") and e.views == ("ten",) and e.which == "best"
  for args, match in ((("--views=center",), "either --workdirs"),
                      (("--workdirs=/a", "--checkpoint=/a/ckpt"), "either --workdirs"),
                      (("--workdirs=/a", "--views=five"), "views")):
    with pytest.raises(ValueError, match=match):
      config_lib.eval_config_from_flags(parse(*args))


# The flags as the code before the tables defined them (issue 16), in flags.txt's order.
OLD_TRAIN_FLAG_NAMES = [
    "data_dir", "data_format", "label_offset", "shuffle_buffer", "private_threadpool_size",
    "cache", "data_service_address", "synthetic", "batch_size", "eval_steps", "workdir",
    "num_classes", "variant", "activation", "lrn", "pooling", "dropout", "remove", "init",
    "input_scale", "conv6", "random_crop", "mirror", "pca_lighting", "mean", "epochs",
    "learning_rate", "lr_scaling", "momentum", "weight_decay", "decay_biases", "lr_schedule",
    "plateau_patience", "plateau_min_delta", "max_lr_drops", "step_epochs", "steps_per_epoch",
    "checkpoint_every_steps", "keep_checkpoints", "resume", "strategy", "devices",
    "num_cpu_devices", "precision", "xla", "collective_timeout", "data_timeout", "seed",
    "deterministic", "log_every_steps", "summary_images", "init_checkpoint", "trainable_from",
    "tiny_model"]
# Added since, on purpose: --cpu_kernels (the switch of keras_alexnet.cpu_kernels, issue 16).
TRAIN_FLAG_NAMES = (OLD_TRAIN_FLAG_NAMES[:OLD_TRAIN_FLAG_NAMES.index("xla") + 1] + ["cpu_kernels"]
                    + OLD_TRAIN_FLAG_NAMES[OLD_TRAIN_FLAG_NAMES.index("xla") + 1:])
OLD_EVALUATE_FLAG_NAMES = OLD_TRAIN_FLAG_NAMES[:10] + [
    "workdirs", "checkpoint", "which", "views", "output", "split"]


def _paper_config(**train):
  """The Config the old config_from_flags built from flags/paper.cfg (all fields spelled out),
  with `train` fields replaced."""
  return config_lib.Config(
      model=model.ModelConfig(num_classes=None, variant="paper", activation="relu", lrn=True,
                              pooling="overlapping", dropout=0.5, remove=(), init="paper",
                              input_scale=1.0, conv6=False),
      data=data_sources.DataConfig(data_dir="/data", format="auto", label_offset=None,
                              shuffle_buffer=10_000, private_threadpool_size=0, cache=False,
                              data_service_address=None, synthetic=False, deterministic=False,
                              seed=0, num_classes=None),
      augment=preprocessing.AugmentConfig(random_crop=True, mirror=True, pca_lighting=True,
                                          mean="per_pixel"),
      train=dataclasses.replace(config_lib.TrainConfig(
          batch_size=128, epochs=90, learning_rate=0.01, lr_scaling="linear", momentum=0.9,
          weight_decay=0.0005, decay_biases=False,
          schedule=optimizer.ScheduleConfig(kind="plateau", patience=2, min_delta=0.0,
                                            max_drops=3, step_epochs=(30, 60, 80)),
          steps_per_epoch=0, eval_steps=0, checkpoint_every_steps=1000, keep_checkpoints=3,
          resume=True, strategy="auto", devices=(), precision="float32", xla=False, seed=0,
          deterministic=False, log_every_steps=100, summary_images=True,
          collective_timeout=0.0, tiny_model=False, init_checkpoint=None, trainable_from=None,
          data_timeout=300.0), **train))


def test_paper_cfg_and_overrides_build_the_config_written_out_by_hand(parse):
  paper = (f"--flagfile={ROOT}/flags/paper.cfg", "--data_dir=/data", "--workdir=/w")
  assert config_lib.config_from_flags(parse(*paper)) == _paper_config()
  got = config_lib.config_from_flags(parse(
      *paper, "--batch_size=256", "--remove=conv3", "--lr_schedule=step", "--step_epochs=10,20",
      "--noresume", "--devices=/cpu:0", "--seed=5", "--deterministic", "--num_classes=10",
      "--data_format=tfds", "--label_offset=1", "--init_checkpoint=", "--trainable_from=fc7",
      "--plateau_min_delta=0.01", "--data_service_address=grpc://dispatcher:5050"))
  want = _paper_config(
      batch_size=256, resume=False, devices=("/cpu:0",), seed=5, deterministic=True,
      trainable_from="fc7", schedule=optimizer.ScheduleConfig(
          kind="step", patience=2, min_delta=0.01, max_drops=3, step_epochs=(10, 20)))
  want = dataclasses.replace(
      want, model=dataclasses.replace(want.model, num_classes=10, remove=("conv3",)),
      data=dataclasses.replace(want.data, format="tfds", label_offset=1, seed=5,
                               deterministic=True, num_classes=10,
                               data_service_address="grpc://dispatcher:5050"))
  assert got == want
  assert got.train.init_checkpoint is None   # "--init_checkpoint=" clears a flagfile's value


@pytest.mark.parametrize("flagfile", sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "flags", "*.cfg"))
    + glob.glob(os.path.join(ROOT, "flags", "ablations", "*"))))
def test_every_flagfile_round_trips_through_flags_txt(parse, flagfile, tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)   # Nested flagfiles are named relative to the repository.
  first = config_lib.config_from_flags(parse(
      f"--flagfile={flagfile}", "--data_dir=/data", "--workdir=/w"))
  path = tmp_path / "flags.txt"
  path.write_text(config_lib.flags_text(FLAGS, ["python", "-m", "keras_alexnet.train"]))
  assert config_lib.config_from_flags(parse(f"--flagfile={path}")) == first


def test_flags_txt_lists_the_flags_in_their_old_order(parse):
  fv = flags.FlagValues()
  config_lib.define_train_flags(fv)
  fv(["train", "--data_dir=/d"])
  lines = config_lib.flags_text(fv).splitlines()[1:]
  names = [line.lstrip("-# ").split("=")[0].split(" ")[0] for line in lines]
  names = [n[2:] if n.startswith("no") and n[2:] in fv and n not in fv else n for n in names]
  assert names == TRAIN_FLAG_NAMES
  fv = flags.FlagValues()
  config_lib.define_evaluate_flags(fv)
  assert [n for n in config_lib.FLAG_NAMES if n in fv] == OLD_EVALUATE_FLAG_NAMES
  assert set(fv) - {"flagfile", "undefok"} == set(OLD_EVALUATE_FLAG_NAMES)


def test_flag_defaults_are_the_dataclass_defaults():
  """Read from the dataclasses here, not through config.py's own field lookup."""
  roots = {"model": model.ModelConfig(), "data": data_sources.DataConfig("no default"),
           "augment": preprocessing.AugmentConfig(), "train": config_lib.TrainConfig(),
           "eval": config_lib.EvalConfig()}
  fv = flags.FlagValues()
  config_lib.define_train_flags(fv)
  config_lib.define_evaluate_flags(fv)
  differ, no_field = {}, []
  for flag in config_lib.DATA_FLAGS + config_lib.TRAIN_FLAGS + config_lib.EVALUATE_FLAGS:
    default = fv[flag.name].default
    if isinstance(default, list):
      default = tuple(int(v) if flag.name == "step_epochs" else v for v in default)
    if not flag.fields:
      no_field.append(flag.name)
    for path in flag.fields.split():
      root, *names = path.split(".")
      value = roots[root]
      for name in names:
        value = getattr(value, name)
      if value != default:
        differ[flag.name] = default
  # The documented differences: a Config built in code keeps one_device; the class count and
  # the data folder come from the run.
  assert differ == {"data_dir": None, "num_classes": None, "strategy": "auto"}
  assert no_field == ["workdir", "num_cpu_devices"]   # The entry point reads them itself.
  assert (fv["workdir"].default, fv["num_cpu_devices"].default) == (None, 0)
  assert fv["step_epochs"].default == ["30", "60", "80"] and fv["remove"].default == []


def test_flag_types_and_choices():
  fv = flags.FlagValues()
  config_lib.define_train_flags(fv)
  config_lib.define_evaluate_flags(fv)
  kinds = {name: type(fv[name]).__name__ for name in config_lib.FLAG_NAMES}
  assert {n for n, k in kinds.items() if k == "BooleanFlag"} == {
      "cache", "synthetic", "lrn", "conv6", "random_crop", "mirror", "pca_lighting",
      "decay_biases", "resume", "xla", "deterministic", "summary_images", "tiny_model"}
  assert {n for n, k in kinds.items() if k == "EnumFlag"} == {
      "data_format", "variant", "activation", "pooling", "init", "mean", "lr_scaling",
      "lr_schedule", "strategy", "precision", "cpu_kernels", "which", "split"}
  assert {n for n in kinds if type(fv[n].parser).__name__ == "ListParser"} == {
      "remove", "step_epochs", "devices", "workdirs", "views"}
  assert fv["strategy"].parser.enum_values == list(config_lib.distribute.STRATEGIES)
  assert fv["cpu_kernels"].parser.enum_values == list(config_lib.cpu_kernels.MODES)
  assert fv["data_format"].parser.enum_values == ["auto", *data_sources.FORMATS]
  assert fv["label_offset"].flag_type() == "int" and fv["input_scale"].flag_type() == "float"


def test_train_help_groups_are_paper_cfgs_headings():
  groups = dict(config_lib.TRAIN_HELP_GROUPS)
  assert list(groups) == ["Data", "Model (section 3)", "Augmentation (section 4.1)",
                          "Optimization (section 5)", "Fine-tuning", "Hardware and bookkeeping"]
  assert set(groups["Data"]) == {
      "data_dir", "data_format", "label_offset", "batch_size", "eval_steps", "shuffle_buffer",
      "private_threadpool_size", "cache", "data_service_address", "synthetic", "data_timeout"}
  assert set(groups["Fine-tuning"]) == {"init_checkpoint", "trainable_from"}
  grouped = [n for _, names in config_lib.TRAIN_HELP_GROUPS for n in names]
  assert sorted(grouped + ["tiny_model"]) == sorted(TRAIN_FLAG_NAMES)   # tiny: "Other flags"


def test_a_fresh_flag_set_gets_its_flags_even_where_a_freed_one_lived():
  """Flags defined before were once remembered by id(FlagValues): a freed one's id handed to
  the next left it without flags (UnrecognizedFlagError)."""
  for _ in range(20):
    fv = flags.FlagValues()
    config_lib.define_train_flags(fv)
    config_lib.define_train_flags(fv)   # Again: no DuplicateFlagError.
    fv(["train", "--data_dir=/d", "--workdir=/w", "--epochs=3"])
    assert config_lib.config_from_flags(fv).train.epochs == 3
    del fv


@pytest.mark.parametrize("args, message", [
    (("--data_dir=/d", "--workdir=/w", "--step_epochs=10,x"),
     "--step_epochs must be a comma-separated list of integers; received '10,x'."),
])
def test_train_error_messages(parse, args, message):
  with pytest.raises(ValueError) as e:
    config_lib.config_from_flags(parse(*args))
  assert str(e.value) == message


@pytest.mark.parametrize("args, message", [
    (("--workdirs=/a", "--views=center,five"),
     "--views must be a non-empty subset of ('center', 'ten'); received ['center', 'five']."),
    (("--workdirs=/a", "--views="),
     "--views must be a non-empty subset of ('center', 'ten'); received []."),
    (("--workdirs=/a", "--batch_size=0"), "--batch_size must be >= 1; received 0."),
    ((), "give either --workdirs=DIR[,DIR...] (several: also their ensemble) or "
         "--checkpoint=PREFIX; received workdirs=[], checkpoint=None."),
])
def test_eval_error_messages(parse, args, message):
  with pytest.raises(ValueError) as e:
    config_lib.eval_config_from_flags(parse(*args))
  assert str(e.value) == message


def test_eval_config_fields(parse):
  e = config_lib.eval_config_from_flags(parse(
      "--checkpoint=/r/ckpt", "--which=latest", "--data_dir=/x", "--views=center",
      "--batch_size=3", "--eval_steps=2", "--output=/o.json", "--split=test"))
  assert e == config_lib.EvalConfig(workdirs=(), checkpoint="/r/ckpt", which="latest",
                                    data_dir="/x", views=("center",), batch_size=3,
                                    eval_steps=2, output="/o.json", split="test")
  assert config_lib.eval_config_from_flags(parse("--workdirs=/a")) == config_lib.EvalConfig(
      workdirs=("/a",))
  # Only the flags of EvalConfig's fields are read (FLAGS here holds train's too).
  assert config_lib.eval_config_from_flags(parse("--workdirs=/a", "--step_epochs=1,x")) == (
      config_lib.EvalConfig(workdirs=("/a",)))
  data = config_lib.data_config_from_flags(parse("--data_dir=/x", "--data_format=tfds",
                                                 "--cache"), seed=3)
  assert data == data_sources.DataConfig("/x", format="tfds", cache=True, seed=3)
