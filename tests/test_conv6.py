"""conv6, section 6's "extra sixth convolutional layer over the last pooling layer" (Table 2's
"1 CNN*"): shapes and parameters by hand, flops, the other switches, placement, export."""

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import config as config_lib
from keras_alexnet import data_sources
from keras_alexnet import dataset_info
from keras_alexnet import export
from keras_alexnet import model as model_lib
from keras_alexnet import preprocessing
from keras_alexnet import workdir as workdir_lib
from keras_alexnet.model import alexnet


@pytest.fixture(scope="module")
def conv6_net():
  return alexnet(conv6=True)


def test_conv6_parameters_and_shapes(conv6_net):
  # conv6 within towers, 3x3, 128 maps per tower over the tower's own 128 maps of pool5:
  #   2 * (3*3*128*128 + 128) = 2 * 147,584 = 295,168
  # on top of the paper's 60,965,224 (tests/test_model.py derives it) = 61,260,392.
  assert conv6_net.get_layer("conv6_a").count_params() == 147_584
  assert conv6_net.get_layer("conv6_b").count_params() == 147_584
  assert conv6_net.count_params() == 60_965_224 + 295_168 == 61_260_392
  shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in conv6_net.layers}
  assert shapes["pool5"] == (6, 6, 256)
  assert shapes["conv6_a"] == shapes["conv6_b"] == (6, 6, 128)
  assert shapes["conv6_concat"] == (6, 6, 256)          # same padding: fc6 is unchanged
  assert tuple(conv6_net.get_layer("fc6").kernel.shape) == (9216, 4096)
  names = [layer.name for layer in conv6_net.layers]
  assert names.index("pool5") < names.index("conv6_a") < names.index("flatten")
  # Bias 1, as conv4 and conv5 (section 5); weights N(0, 0.01).
  np.testing.assert_array_equal(conv6_net.get_layer("conv6_a").bias.numpy(), 1.0)
  assert abs(np.std(conv6_net.get_layer("conv6_b").kernel.numpy()) - 0.01) < 5e-4


def test_conv6_one_tower_and_flops(conv6_net):
  # One tower: 3*3*256*256 + 256 = 590,080 over the variant's 61,100,840.
  net = alexnet(variant="one_tower", conv6=True)
  assert net.get_layer("conv6").count_params() == 590_080
  assert net.count_params() == 61_100_840 + 590_080
  # FLOPs: 2 * 6*6*256 outputs * 3*3*128 inputs each (towers) more than the paper net's.
  plain = model_lib.flops_per_image(alexnet())
  assert model_lib.flops_per_image(conv6_net) - plain == 2 * 6 * 6 * 256 * 9 * 128
  assert model_lib.flops_per_image(net) - model_lib.flops_per_image(
      alexnet(variant="one_tower")) == 2 * 6 * 6 * 256 * 9 * 256


@pytest.mark.parametrize("switches", [
    dict(remove=("conv5",), pooling="non_overlapping"),
    dict(activation="tanh", lrn=False, dropout=0.0),
    dict(init="he", input_scale=1 / 64, remove=("conv3", "conv4")),
])
def test_conv6_with_the_other_switches(switches):
  net = alexnet(num_classes=7, conv6=True, **switches)
  assert tuple(net.get_layer("conv6_concat").output.shape[1:]) == (6, 6, 256)
  out = net(tf.random.normal((1, 224, 224, 3), seed=1), training=False)
  assert out.shape == (1, 7) and np.all(np.isfinite(out.numpy()))


def test_conv6_two_device_placement_matches_single_device():
  devices = ("/cpu:0", "/cpu:1")
  placed = alexnet(num_classes=10, conv6=True, devices=devices)
  single = alexnet(num_classes=10, conv6=True)
  single.set_weights(placed.get_weights())
  assert placed.get_layer("conv6_b").kernel.value.device.endswith("CPU:1")
  assert placed.get_layer("conv6_a").kernel.value.device.endswith("CPU:0")
  images = tf.random.normal((2, 224, 224, 3), seed=5)
  np.testing.assert_allclose(placed(images).numpy(), single(images).numpy(),
                             rtol=1e-5, atol=1e-6)


def test_conv6_export_serves_the_models_probabilities(tmp_path):
  net = alexnet(num_classes=5, conv6=True, init="he", devices=("/cpu:0", "/cpu:1"))
  stats = dataset_info.imagenet_statistics()
  path = export.export_saved_model(net, {"classes": None}, stats, str(tmp_path), warmup=False)
  loaded = tf.saved_model.load(path)
  rng = np.random.default_rng(0)
  crops = rng.normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
  served = loaded.signatures["preprocessed"](images=tf.constant(crops))
  probabilities = served["probabilities"].numpy()
  np.testing.assert_allclose(probabilities, tf.nn.softmax(net(crops)).numpy(),
                             rtol=1e-4, atol=1e-6)


def test_conv6_round_trips_through_config_json():
  config = model_lib.ModelConfig(num_classes=3, conv6=True)
  fields = workdir_lib.model_config_to_json(config)
  assert fields["conv6"] is True
  assert workdir_lib.model_config_from_json(fields) == config
  # A workdir written before conv6 existed has no such field: the paper net.
  del fields["conv6"]
  assert workdir_lib.model_config_from_json(fields).conv6 is False
  # The tiny test net follows --conv6 too (quick pre-train / fine-tune tests).
  tiny = workdir_lib.build_model(config, tiny=True)
  assert "conv6" in [layer.name for layer in tiny.layers]


def test_conv6_flag_and_what_it_cannot_follow(tmp_path):
  from absl import flags   # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_lib.define_train_flags(fv)
  fv(["train", "--conv6", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}"])
  assert config_lib.config_from_flags(fv).model.conv6 is True
  with pytest.raises(ValueError, match=r"conv6 must be True or False; received 'yes'"):
    alexnet(conv6="yes")
  config = config_lib.Config(
      model=model_lib.ModelConfig(), data=data_sources.DataConfig(str(tmp_path)),
      augment=preprocessing.AugmentConfig(),
      train=config_lib.TrainConfig(trainable_from="conv6"))
  with pytest.raises(ValueError, match=r"--trainable_from must be a layer of the model: conv6 "
                     r"exists only with --conv6; received 'conv6'"):
    config_lib.check_train_config(config)
