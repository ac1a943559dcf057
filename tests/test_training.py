"""train_and_evaluate in-process: a smoke run that learns, the strategies, the bad inputs
that must fail before the workdir is touched. (Killed, stopped and multi-worker runs are in
test_train.py, as real processes.)"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import config as config_lib
from keras_alexnet import data_sources
from keras_alexnet import dataset_info
from keras_alexnet import distribute
from keras_alexnet import model as model_lib
from keras_alexnet import optimizer as optimizer_lib
from keras_alexnet import preprocessing
from keras_alexnet import testing
from keras_alexnet import training
from keras_alexnet import workdir as workdir_lib
import tiny_data

NO_AUGMENTATION = preprocessing.AugmentConfig(random_crop=False, mirror=False,
                                              pca_lighting=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("data")), train=64)


def _config(data_dir, model=None, augment=None, **train):
  defaults = dict(tiny_model=True, batch_size=8, epochs=1, steps_per_epoch=4, eval_steps=2,
                  log_every_steps=1, checkpoint_every_steps=2, lr_scaling="none")
  model = model or model_lib.ModelConfig(num_classes=None)
  return config_lib.Config(   # As config_from_flags makes it: --num_classes goes to both.
      model=model,
      data=data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=64,
                                  num_classes=model.num_classes),
      augment=augment or preprocessing.AugmentConfig(),
      train=config_lib.TrainConfig(**{**defaults, **train}))


def test_smoke_run_learns_and_leaves_checkpoints_and_events(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = _config(data_dir, epochs=2, steps_per_epoch=8, learning_rate=0.003,
                   checkpoint_every_steps=3)
  result = training.train_and_evaluate(config, workdir, "--flag=1\n")
  assert result["step"] == 16 and result["epoch"] == 2

  store = workdir_lib.CheckpointStore(workdir)
  # The newest 3 (keep_checkpoints), and the best by validation error.
  best = store.best()["step"]
  assert best in (8, 16) and store.steps() == sorted({best, 12, 15, 16})
  with open(os.path.join(store.path(16), workdir_lib.STATE_FILE)) as f:
    history = json.load(f)["history"]
  val_losses = [h["validation"]["loss"] for h in history]
  assert val_losses[1] < val_losses[0], val_losses
  train = tiny_data.read_events(os.path.join(workdir, "tensorboard", "train"))
  losses = [float(train["loss"][s]) for s in sorted(train["loss"])]
  assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4]), losses
  for tag in ("top1_error", "top5_error", "learning_rate", "images_per_second",
              "conv1_kernels", "augmented_inputs"):
    assert tag in train, tag
  validation = tiny_data.read_events(os.path.join(workdir, "tensorboard", "validation"))
  assert sorted(validation["top1_error"]) == [8, 16]
  with open(os.path.join(workdir, workdir_lib.FLAGS_FILE)) as f:
    assert f.read() == "--flag=1\n"
  metadata = workdir_lib.read_metadata(workdir)
  assert metadata["num_classes"] == 4 and len(metadata["classes"]) == 4


def test_initial_model_rebuilds_the_weights_a_run_started_from(data_dir, tmp_path):
  """What the demo's conv1_learned.png subtracts: a run whose steps barely move the weights
  (rate 1e-12) ends where workdir.initial_model says it started."""
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(_config(data_dir, learning_rate=1e-12, seed=3), workdir)
  trained, _ = workdir_lib.load_model(workdir, "latest")
  initial = workdir_lib.initial_model(workdir)
  for a, b in zip(trained.trainable_variables, initial.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7, err_msg=a.path)
  keras.utils.set_random_seed(4)
  other = workdir_lib.build_model(model_lib.ModelConfig(num_classes=4), tiny=True)
  assert not np.allclose(other.get_layer("conv1").kernel.numpy(),
                         initial.get_layer("conv1").kernel.numpy(), atol=1e-4)


def _final_weights(workdir):
  model, _ = workdir_lib.load_model(workdir, "latest")
  return [v.numpy() for v in model.trainable_variables]


def test_mirrored_on_two_devices_equals_one_device(data_dir, tmp_path, monkeypatch):
  """Same global batch of 8: one device, or two replicas of 4 whose gradients are summed."""
  tiny_data.unique_collective_keys(monkeypatch)
  model = model_lib.ModelConfig(num_classes=None, dropout=0.0)
  runs = {}
  for strategy, devices in (("one_device", ("/cpu:0",)), ("mirrored", ("/cpu:0", "/cpu:1"))):
    workdir = str(tmp_path / strategy)
    runs[strategy] = training.train_and_evaluate(
        _config(data_dir, model, NO_AUGMENTATION, strategy=strategy, devices=devices,
                steps_per_epoch=3), workdir)
    runs[strategy]["weights"] = _final_weights(workdir)
  assert workdir_lib.read_metadata(str(tmp_path / "mirrored"))["train"]["replicas"] == 2
  for a, b in zip(runs["one_device"]["weights"], runs["mirrored"]["weights"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(runs["one_device"]["validation"]["loss"],
                             runs["mirrored"]["validation"]["loss"], rtol=1e-4)


def test_two_tower_step_equals_one_device_step():
  """One training step of the paper's net with tower a on /cpu:0 and tower b on /cpu:1, as
  --strategy=two_tower runs it, equals the same step on one device."""
  strategy, devices = distribute.make_strategy(config_lib.TrainConfig(strategy="two_tower"))
  assert devices == ("/device:CPU:0", "/device:CPU:1")
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, (2, 256, 256, 3)), tf.uint8)
  labels = tf.constant([1, 3], tf.int32)
  stats = dataset_info.imagenet_statistics()
  results = []
  for strategy, devices in ((strategy, devices), (tf.distribute.OneDeviceStrategy("/cpu:0"),
                                                  None)):
    keras.utils.set_random_seed(1)
    with strategy.scope():
      model = model_lib.alexnet(num_classes=4, devices=devices)
      opt = optimizer_lib.PaperSGD(0.01)
      opt.build(model.trainable_variables)
    step = training.make_train_step(model, opt, strategy, stats, preprocessing.AugmentConfig(),
                                    2, 0, False)
    loss_sum, _, _, _ = step(images, labels, tf.constant(0, tf.int64), tf.constant(0.0))
    results.append((float(loss_sum), model.get_layer("conv2_b").kernel.numpy(),
                    model.get_layer("fc8").kernel.numpy()))
  (loss_a, conv2_a, fc8_a), (loss_b, conv2_b, fc8_b) = results
  assert np.isfinite(loss_a) and loss_a == pytest.approx(loss_b, rel=1e-5)
  np.testing.assert_allclose(conv2_a, conv2_b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(fc8_a, fc8_b, rtol=1e-5, atol=1e-7)


def _untouched(workdir, call, error, match):
  before = sorted(os.listdir(workdir)) if os.path.exists(workdir) else None
  with pytest.raises(error, match=match):
    call()
  after = sorted(os.listdir(workdir)) if os.path.exists(workdir) else None
  assert before == after


def test_bad_input_fails_before_touching_the_workdir(data_dir, tmp_path, monkeypatch):
  tiny_data.unique_collective_keys(monkeypatch)
  workdir = str(tmp_path / "run")
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  cases = [
      (_config(empty), FileNotFoundError, "python -m tfrecords.build"),
      (_config(str(tmp_path / "missing")), FileNotFoundError, "python -m tfrecords.build"),
      (_config(data_dir, model_lib.ModelConfig(num_classes=10)), ValueError,
       "--num_classes=10 but the dataset .* has 4 classes"),
      (_config(data_dir, strategy="mirrored", devices=("/cpu:0", "/cpu:1"), batch_size=7),
       ValueError, "not divisible by the 2 replicas"),
      (_config(data_dir, strategy="two_tower", tiny_model=False, devices=("/cpu:0",)),
       ValueError, "exactly two devices"),
      (_config(data_dir, strategy="one_device", devices=("/gpu:7",)), ValueError,
       "not found"),
      (_config(data_dir, strategy="bogus"), ValueError, "strategy must be one of"),
      (_config(data_dir, precision="float64"), ValueError, "precision must be one of"),
      (_config(data_dir, batch_size=128), ValueError, "fewer than one global batch"),
  ]
  for config, error, match in cases:
    _untouched(workdir, lambda: training.train_and_evaluate(config, workdir), error, match)
  assert not os.path.exists(workdir)

  # A workdir holding another run: resuming it with another model is refused, untouched.
  training.train_and_evaluate(_config(data_dir, steps_per_epoch=1, eval_steps=1), workdir)
  other = _config(data_dir, model_lib.ModelConfig(num_classes=None, dropout=0.2))
  _untouched(workdir, lambda: training.train_and_evaluate(other, workdir), ValueError,
             "holds a run with model_config")

  # --resume=false starts afresh, moving the old run aside rather than deleting it.
  fresh = dataclasses.replace(other, train=dataclasses.replace(
      other.train, resume=False, steps_per_epoch=1, eval_steps=1))
  assert training.train_and_evaluate(fresh, workdir)["step"] == 1
  previous = [n for n in os.listdir(workdir) if n.startswith("previous-")]
  assert len(previous) == 1
  assert workdir_lib.CheckpointStore(os.path.join(workdir, previous[0])).steps() == [1]


@pytest.mark.parametrize("precision, xla", [("mixed_float16", True), ("mixed_bfloat16", False)])
def test_mixed_precision_and_xla_steps(precision, xla):
  """--precision and --xla: float32 variables, a finite loss, an update; float16 with a
  dynamic loss scale."""
  keras.mixed_precision.set_global_policy(precision)
  try:
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
      model = testing.tiny_model(4)
      opt = optimizer_lib.PaperSGD(0.01)
      if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
      opt.build(model.trainable_variables)
    kernel = model.get_layer("conv1").kernel
    before = kernel.numpy()
    step = training.make_train_step(model, opt, strategy, dataset_info.imagenet_statistics(),
                                    preprocessing.AugmentConfig(), 4, 0, xla)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3)), tf.uint8)
    loss_sum, _, _, _ = step(images, tf.constant([0, 1, 2, 3]), tf.constant(0, tf.int64),
                             tf.constant(0.0))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert np.isfinite(float(loss_sum))
  assert kernel.dtype == "float32" and not np.array_equal(kernel.numpy(), before)
  if precision == "mixed_float16":
    assert float(opt.dynamic_scale.numpy()) > 1


def test_train_state_round_trips_through_state_json_and_reads_older_ones():
  schedule = optimizer_lib.make_schedule(optimizer_lib.ScheduleConfig(kind="plateau"), 0.01)
  schedule.update(0, 0.5)
  schedule.update(1, 0.6)   # One epoch without improvement.
  state = training.TrainState(schedule, step=12, epoch=2, batch=3, best_top1_error=0.5,
                              history=[{"epoch": 1}, {"epoch": 2}], earlier_seconds=7.0)
  saved = json.loads(json.dumps(state.to_json(steps_per_epoch=5, batch_size=8,
                                              learning_rate=0.01)))
  assert sorted(saved) == ["batch", "batch_size", "best_top1_error", "epoch", "history",
                           "learning_rate", "schedule", "step", "steps_per_epoch",
                           "train_seconds"]
  assert saved["train_seconds"] >= 7.0
  fresh = optimizer_lib.make_schedule(optimizer_lib.ScheduleConfig(kind="plateau"), 0.01)
  restored = training.TrainState.from_json(saved, fresh)
  assert (restored.step, restored.epoch, restored.batch) == (12, 2, 3)
  assert restored.best_top1_error == 0.5 and restored.history == state.history
  assert restored.saved_seconds == restored.earlier_seconds == saved["train_seconds"]
  assert fresh.state() == schedule.state()
  # A state.json of the first releases had neither history nor train_seconds.
  old = {k: v for k, v in saved.items() if k not in ("history", "train_seconds")}
  restored = training.TrainState.from_json(old, optimizer_lib.make_schedule(
      optimizer_lib.ScheduleConfig(kind="plateau"), 0.01))
  assert restored.history == [] and restored.saved_seconds == 0.0 and restored.step == 12
  # Another schedule kind than the run's is refused, not silently mixed.
  with pytest.raises(ValueError, match="another --lr_schedule"):
    training.TrainState.from_json(saved, optimizer_lib.make_schedule(
        optimizer_lib.ScheduleConfig(kind="step"), 0.01))
