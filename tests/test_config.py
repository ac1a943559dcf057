"""Flags -> Config: flagfiles with overrides, the paper's recipe in flags/paper.cfg, the record
written to the workdir, and the errors for bad settings."""

import dataclasses
import importlib
import os

from absl import flags
import pytest

from keras_alexnet import config as config_lib

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
  for bad in ("--strategy=ring", "--precision=float64", "--variant=vgg"):
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
                              ("learning_rate", 0.0, "learning_rate")):
    bad = dataclasses.replace(config, train=dataclasses.replace(config.train, **{field: value}))
    with pytest.raises(ValueError, match=match):
      config_lib.check_train_config(bad)


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
