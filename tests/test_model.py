"""The model is the paper's: counts, shapes, towers, init, placement, serialization (the LRN layer:
test_layers.py; the CPU speed-ups' paths: test_cpu_kernels.py)."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from keras_alexnet import model as model_lib
from keras_alexnet.layers import LocalResponseNormalization
from keras_alexnet.model import alexnet


@pytest.fixture(scope="module")
def paper_net():
  return alexnet()


def test_paper_parameter_count(paper_net):
  # weights + biases, layer by layer (towers: 2 x the per-tower count):
  #   conv1  11*11*3*96    + 96        =     34,944
  #   conv2  2*(5*5*48*128 + 128)      =    307,456  (each tower sees its own 48 maps)
  #   conv3  3*3*256*384   + 384       =    885,120  (sees all 256 maps)
  #   conv4  2*(3*3*192*192 + 192)     =    663,936
  #   conv5  2*(3*3*192*128 + 128)     =    442,624
  #   fc6    6*6*256*4096  + 4096      = 37,752,832
  #   fc7    4096*4096     + 4096      = 16,781,312
  #   fc8    4096*1000     + 1000      =  4,097,000
  #                                total 60,965,224
  assert paper_net.count_params() == 60_965_224
  expected = {"conv1": 34_944, "conv2_a": 153_728, "conv2_b": 153_728, "conv3": 885_120,
              "conv4_a": 331_968, "conv4_b": 331_968, "conv5_a": 221_312, "conv5_b": 221_312,
              "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}
  assert {n: paper_net.get_layer(n).count_params() for n in expected} == expected


def test_paper_block_shapes(paper_net):
  shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in paper_net.layers}
  assert shapes["conv1"] == (55, 55, 96)
  assert shapes["pool1"] == (27, 27, 96)
  assert shapes["conv2_a"] == shapes["conv2_b"] == (27, 27, 128)
  assert shapes["pool2"] == (13, 13, 256)
  assert shapes["conv3"] == (13, 13, 384)
  assert shapes["conv4_a"] == shapes["conv4_b"] == (13, 13, 192)
  assert shapes["conv5_a"] == shapes["conv5_b"] == (13, 13, 128)
  assert shapes["pool5"] == (6, 6, 256)
  assert shapes["fc6"] == shapes["fc7"] == (4096,)
  assert shapes["fc8"] == (1000,)
  assert paper_net.get_layer("dropout6").rate == paper_net.get_layer("dropout7").rate == 0.5
  for name in ("pool1", "pool2", "pool5"):  # Section 3.4: overlapping, z=3, s=2.
    layer = paper_net.get_layer(name)
    assert tuple(layer.pool_size) == (3, 3) and tuple(layer.strides) == (2, 2)


def test_flops_per_image(paper_net):
  # 2 FLOPs per multiply-add: conv1 2*55*55*96*363, conv2 2*27*27*256*(25*48),
  # conv3 2*13*13*384*(9*256), conv4 2*13*13*384*(9*192), conv5 2*13*13*256*(9*192),
  # fc 2*(9216*4096 + 4096*4096 + 4096*1000).
  expected = 2 * (55 * 55 * 96 * 363 + 27 * 27 * 256 * 1200 + 13 * 13 * 384 * 2304
                  + 13 * 13 * 384 * 1728 + 13 * 13 * 256 * 1728
                  + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
  assert model_lib.flops_per_image(paper_net) == expected
  assert 4.3e9 < 3 * expected < 4.4e9  # about 4.35 GFLOP per training image


def test_one_tower_variant():
  net = alexnet(variant="one_tower")
  # Krizhevsky 2014 widths 64-192-384-256-256, the same count as torchvision's alexnet.
  assert net.count_params() == 61_100_840
  assert not any(isinstance(l, LocalResponseNormalization) for l in net.layers)
  assert tuple(net.get_layer("conv1").output.shape[1:]) == (55, 55, 64)
  assert tuple(net.get_layer("pool5").output.shape[1:]) == (6, 6, 256)


def test_paper_init():
  net = alexnet(num_classes=10)
  for layer in net.layers:
    if not hasattr(layer, "kernel"):
      continue
    bias = layer.bias.numpy()
    stem = layer.name.split("_")[0]
    # Section 5: biases 1 in conv2, conv4, conv5, fc6, fc7; 0 elsewhere.
    assert np.all(bias == (1.0 if stem in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0))
    kernel = layer.kernel.numpy()
    if kernel.size > 10_000:  # enough samples for the moments to be tight
      assert abs(kernel.mean()) < 1e-3
      assert abs(kernel.std() - 0.01) < 5e-4, layer.name


def test_he_init_option():
  net = alexnet(num_classes=10, init="he")
  kernel = net.get_layer("conv3").kernel.numpy()
  assert abs(kernel.std() - np.sqrt(2.0 / (3 * 3 * 256))) < 0.1 * np.sqrt(2.0 / (3 * 3 * 256))
  assert np.all(net.get_layer("fc6").bias.numpy() == 0)


def test_tower_connectivity():
  net = alexnet(num_classes=10)
  rng = np.random.default_rng(2)

  # conv2: each tower sees only its own 48 maps of pool1.
  conv2 = keras.Model(net.get_layer("pool1").output,
                      [net.get_layer("conv2_a").output, net.get_layer("conv2_b").output])
  x = rng.normal(size=(1, 27, 27, 96)).astype(np.float32)
  x_changed = x.copy()
  x_changed[..., :48] += rng.normal(size=(1, 27, 27, 48)).astype(np.float32)
  a0, b0 = conv2(x)
  a1, b1 = conv2(x_changed)
  np.testing.assert_array_equal(b0.numpy(), b1.numpy())
  assert np.max(np.abs(a0.numpy() - a1.numpy())) > 1e-3

  # conv3 sees all 256 maps; conv4_b sees only the second half of conv3's maps.
  conv3 = keras.Model(net.get_layer("pool2").output, net.get_layer("conv3").output)
  y = rng.uniform(0, 1, size=(1, 13, 13, 256)).astype(np.float32)
  y_changed = y.copy()
  y_changed[..., :128] += 1.0
  out0, out1 = conv3(y).numpy(), conv3(y_changed).numpy()
  changed = np.abs(out0 - out1).max(axis=(0, 1, 2)) > 0
  assert changed[:192].any() and changed[192:].any()

  conv4 = keras.Model(net.get_layer("conv3").output,
                      [net.get_layer("conv4_a").output, net.get_layer("conv4_b").output])
  z = rng.uniform(0, 1, size=(1, 13, 13, 384)).astype(np.float32)
  z_changed = z.copy()
  z_changed[..., :192] += 1.0
  (a0, b0), (a1, b1) = conv4(z), conv4(z_changed)
  np.testing.assert_array_equal(b0.numpy(), b1.numpy())
  assert np.max(np.abs(a0.numpy() - a1.numpy())) > 1e-3


def _train_step(net, images, labels):
  optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
  with tf.GradientTape() as tape:
    logits = net(images, training=True)
    loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        labels, tf.cast(logits, tf.float32), from_logits=True))
  grads = tape.gradient(loss, net.trainable_variables)
  assert all(g is not None for g in grads)
  optimizer.apply_gradients(zip(grads, net.trainable_variables))
  return float(loss)


def test_one_training_step_float32_without_xla():
  net = alexnet(num_classes=10)
  before = net.get_layer("conv1").kernel.numpy().copy()
  rng = np.random.default_rng(3)
  images = tf.constant(rng.normal(size=(2, 224, 224, 3)).astype(np.float32))
  labels = tf.constant([1, 7])
  step = tf.function(lambda x, y: _train_step_graph(net, x, y), jit_compile=False)
  loss = step(images, labels)
  assert np.isfinite(loss.numpy())
  assert np.any(net.get_layer("conv1").kernel.numpy() != before)


def _train_step_graph(net, images, labels, optimizer=[]):
  if not optimizer:
    optimizer.append(keras.optimizers.SGD(learning_rate=0.01, momentum=0.9))
  with tf.GradientTape() as tape:
    logits = net(images, training=True)
    loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        labels, tf.cast(logits, tf.float32), from_logits=True))
  grads = tape.gradient(loss, net.trainable_variables)
  optimizer[0].apply_gradients(zip(grads, net.trainable_variables))
  return loss


def test_one_training_step_mixed_bfloat16():
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    net = alexnet(num_classes=10)
    assert net.get_layer("conv1").compute_dtype == "bfloat16"
    assert net.get_layer("conv1").kernel.dtype == "float32"  # variables stay float32
    assert net.get_layer("lrn1").compute_dtype == "float32"
    images = tf.random.normal((2, 224, 224, 3), seed=4)
    loss = _train_step(net, images, tf.constant([0, 3]))
  finally:
    keras.config.set_dtype_policy(previous)
  assert np.isfinite(loss)


def test_two_device_split_matches_single_device():
  devices = ("/cpu:0", "/cpu:1")
  placed = alexnet(num_classes=10, devices=devices)
  single = alexnet(num_classes=10)
  single.set_weights(placed.get_weights())
  # Tower b's variables live on device b; the spanning layers' whole variables on device a.
  assert placed.get_layer("conv2_b").kernel.value.device.endswith("CPU:1")
  assert placed.get_layer("conv2_a").kernel.value.device.endswith("CPU:0")
  images = tf.random.normal((2, 224, 224, 3), seed=5)
  np.testing.assert_allclose(placed(images).numpy(), single(images).numpy(),
                             rtol=1e-5, atol=1e-6)
  # And it trains: gradients reach both towers' variables across the devices.
  loss = _train_step(placed, images, tf.constant([2, 9]))
  assert np.isfinite(loss)


def test_input_scale_is_part_of_the_model():
  paper = alexnet(num_classes=5)
  scaled = alexnet(num_classes=5, input_scale=1 / 64)
  scaled.set_weights(paper.get_weights())
  assert paper.count_params() == scaled.count_params()
  assert "input_scale" not in [l.name for l in paper.layers]  # the paper: raw pixels - mean
  images = tf.random.normal((2, 224, 224, 3), stddev=60, seed=8)
  np.testing.assert_allclose(scaled(images).numpy(), paper(images / 64).numpy(),
                             rtol=1e-4, atol=1e-5)


def test_keras_save_load_round_trip(tmp_path):
  net = alexnet(num_classes=5, devices=None)
  path = str(tmp_path / "alexnet.keras")
  net.save(path)
  loaded = keras.saving.load_model(path)  # safe_mode stays on: no Lambda layers
  images = tf.random.normal((2, 224, 224, 3), seed=6)
  np.testing.assert_array_equal(loaded(images).numpy(), net(images).numpy())
  assert [l.name for l in loaded.layers] == [l.name for l in net.layers]


@pytest.mark.parametrize("overrides, message", [
    ({"variant": "vgg"}, "variant must be one of"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2; received 1"),
    ({"num_classes": 10.0}, "num_classes must be an integer"),
    ({"input_shape": (227, 227, 3)}, "input_shape must be (224, 224, 3)"),
    ({"activation": "gelu"}, "activation must be one of"),
    ({"input_scale": 0}, "input_scale must be a number > 0; received 0"),
    ({"pooling": "avg"}, "pooling must be one of"),
    ({"dropout": 1.0}, "dropout must be a rate in [0, 1)"),
    ({"remove": ("conv1",)}, "remove must be a subset of ('conv3', 'conv4', 'conv5')"),
    ({"init": "he", "activation": "tanh"}, "init 'he'"),
    ({"devices": ("/cpu:0", "/gpu:7")}, "two-tower split needs two devices; ['/gpu:7'] not found"),
    ({"devices": ("/cpu:0",)}, "two distinct device names"),
    ({"variant": "one_tower", "devices": ("/cpu:0", "/cpu:1")}, "None for variant 'one_tower'"),
])
def test_bad_config_errors_name_what_was_received(overrides, message):
  with pytest.raises(ValueError) as error:
    alexnet(**overrides)
  assert message in str(error.value)
