"""Fine-tuning (--init_checkpoint, --trainable_from): from a 1000-class paper-net checkpoint to
a 5-class dataset, and the bad inputs that must fail before the workdir is touched."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import config as config_lib
from keras_alexnet import data_sources
from keras_alexnet import files
from keras_alexnet import finetune
from keras_alexnet import model as model_lib
from keras_alexnet import preprocessing
from keras_alexnet import training
from keras_alexnet import workdir as workdir_lib
import tiny_data

FROZEN = ("conv1", "conv2_a", "conv2_b", "conv3")   # Before --trainable_from=conv4.


def _paper_workdir(workdir, num_classes, seed, **model):
  """A workdir holding one checkpoint of the untrained paper net, as train saves it."""
  config = model_lib.ModelConfig(num_classes=num_classes, **model)
  keras.utils.set_random_seed(seed)
  net = workdir_lib.build_model(config)
  os.makedirs(workdir)
  files.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), {
      "model_config": workdir_lib.model_config_to_json(config), "tiny_model": False,
      "num_classes": num_classes})
  workdir_lib.CheckpointStore(workdir).save(
      tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(net)), 1, {"step": 1})
  return workdir, {layer.name: [w.numpy() for w in layer.weights] for layer in net.layers
                   if layer.weights}


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
  """(workdir, weights by layer) of a 1000-class run."""
  return _paper_workdir(str(tmp_path_factory.mktemp("imagenet") / "run"), 1000, seed=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("data")), num_classes=5,
                                 train=8, validation=4)


def _config(data_dir, **train):
  defaults = dict(batch_size=4, epochs=1, steps_per_epoch=2, eval_steps=1, log_every_steps=1,
                  checkpoint_every_steps=100, lr_scaling="none", learning_rate=0.001,
                  summary_images=False)
  return config_lib.Config(
      model=model_lib.ModelConfig(num_classes=None),
      data=data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=8),
      augment=preprocessing.AugmentConfig(random_crop=False, mirror=False, pca_lighting=False),
      train=config_lib.TrainConfig(**{**defaults, **train}))


def _weights(model):
  return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers
          if layer.weights}


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_load_init_weights_keeps_every_layer_but_fc8(imagenet_run):
  workdir, source = imagenet_run
  keras.utils.set_random_seed(7)
  model = workdir_lib.build_model(model_lib.ModelConfig(num_classes=5))
  fresh_fc8 = [w.numpy() for w in model.get_layer("fc8").weights]
  report = finetune.load_init_weights(model, workdir)
  assert report["reinitialised"] == ["fc8"]
  assert report["loaded"] == [n for n in source if n != "fc8"]
  loaded = _weights(model)
  for name in report["loaded"]:
    assert _equal(loaded[name], source[name]), name
  assert _equal(loaded["fc8"], fresh_fc8) and loaded["fc8"][0].shape == (4096, 5)


def test_finetune_trains_the_top_and_leaves_frozen_layers_alone(imagenet_run, data_dir,
                                                                 tmp_path):
  workdir, source = imagenet_run
  run = str(tmp_path / "finetune")
  config = _config(data_dir, init_checkpoint=workdir, trainable_from="conv4")
  result = training.train_and_evaluate(config, run)
  assert result["step"] == 2 and np.isfinite(result["validation"]["loss"])
  model, metadata = workdir_lib.load_model(run, "latest")
  assert metadata["num_classes"] == 5
  after = _weights(model)
  for name in FROZEN:
    assert _equal(after[name], source[name]), name
  for name in ("conv4_a", "conv4_b", "conv5_a", "conv5_b", "fc6", "fc7"):
    assert not _equal(after[name], source[name]), f"{name} did not train"

  # Resuming: the workdir's own checkpoint wins over --init_checkpoint (here another run).
  other, other_weights = _paper_workdir(str(tmp_path / "other"), 1000, seed=2)
  assert not _equal(other_weights["conv1"], source["conv1"])
  config = _config(data_dir, init_checkpoint=other, trainable_from="conv4", epochs=2)
  assert training.train_and_evaluate(config, run)["step"] == 4
  resumed = _weights(workdir_lib.load_model(run, "latest")[0])
  for name in FROZEN:
    assert _equal(resumed[name], source[name]), name


def test_trainable_from_must_name_a_layer(data_dir, tmp_path):
  config = _config(data_dir, trainable_from="conv9")
  with pytest.raises(ValueError, match=r"--trainable_from must be one of .*'conv1'.*'fc8'.*"
                     r"received 'conv9'"):
    config_lib.check_train_config(config)
  # Checked against the model itself too: the tiny test net has layers of its own names.
  run = str(tmp_path / "run")
  config = _config(data_dir, trainable_from="fc8", tiny_model=True)
  with pytest.raises(ValueError, match=r"\['conv1', 'conv2', 'fc'\]; received 'fc8'"):
    training.train_and_evaluate(config, run)
  assert not os.path.exists(run)


def test_init_checkpoint_that_does_not_fit(imagenet_run, data_dir, tmp_path):
  workdir, _ = imagenet_run
  # Without conv3 (section 7's ablation) conv4 sees conv2's 128 maps per tower, not 192.
  run = str(tmp_path / "run")
  config = _config(data_dir, init_checkpoint=workdir)
  config = config_lib.Config(model=model_lib.ModelConfig(num_classes=None, remove=("conv3",)),
                             data=config.data, augment=config.augment, train=config.train)
  with pytest.raises(ValueError) as error:
    training.train_and_evaluate(config, run)
  message = str(error.value)
  assert "Layers only in this model: none; only in the checkpoint: ['conv3']" in message
  assert ("conv4_a: checkpoint [(3, 3, 192, 192), (192,)], model [(3, 3, 128, 192), (192,)]"
          in message)
  assert "fc8" not in message.split("shapes that differ")[1]
  assert not os.path.exists(run)


def test_finetune_flagfile_parses(tmp_path, monkeypatch):
  from absl import flags   # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_lib.define_train_flags(fv)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  monkeypatch.chdir(root)   # The flagfile names flags/paper.cfg relative to the repository.
  fv(["train", "--flagfile=flags/finetune.cfg", "--init_checkpoint=/runs/alexnet",
      f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}"])
  config = config_lib.config_from_flags(fv)
  assert config.train.init_checkpoint == "/runs/alexnet"
  assert config.train.trainable_from == "conv4" and config.train.learning_rate == 0.001
  assert config.train.epochs == 30 and config.model.variant == "paper"
