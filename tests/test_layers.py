"""The network's layers: LRN as section 3.3 writes it, per tower; the tower split; placed
layers; and .keras files saved before the layers moved out of model.py still load."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import cpu_kernels
from keras_alexnet import layers
from keras_alexnet.layers import LocalResponseNormalization


def _paper_lrn_numpy(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """Section 3.3, literally: sum over max(0, i-n/2) .. min(N-1, i+n/2), float64."""
  a = a.astype(np.float64)
  depth = a.shape[-1]
  b = np.empty_like(a)
  for i in range(depth):
    lo, hi = max(0, i - n // 2), min(depth - 1, i + n // 2)
    b[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return b


# Inference (TF's op), and training with the CPU speed-ups off (TF's op) and on (XLA-fused).
@pytest.mark.parametrize("training, mode", [(False, "auto"), (True, "off"), (True, "on")])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_lrn_matches_paper_formula(policy, training, mode):
  rng = np.random.default_rng(0)
  # Values of the size ReLU outputs reach, so that the alpha term matters.
  a = rng.uniform(0, 60, size=(2, 5, 5, 16)).astype(np.float32)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    layer = LocalResponseNormalization()
    with cpu_kernels.using(mode):
      out = layer(a, training=training)
  finally:
    keras.config.set_dtype_policy(previous)
  assert out.dtype == tf.float32  # pinned to float32 under mixed precision too
  expected = _paper_lrn_numpy(a)
  rel = np.max(np.abs(out.numpy() - expected) / np.abs(expected).clip(1e-12))
  assert rel < 1e-6
  # And the alpha term is not negligible here (otherwise the test could not tell alphas apart).
  assert np.max(np.abs(expected - a / 2.0 ** 0.75)) > 1e-2


def test_lrn_per_tower_never_crosses_towers():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 60, size=(1, 3, 3, 8)).astype(np.float32)
  out = LocalResponseNormalization(towers=2)(a).numpy()
  expected = np.concatenate([_paper_lrn_numpy(a[..., :4]), _paper_lrn_numpy(a[..., 4:])], -1)
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_bad_layer_arguments_name_what_was_received():
  with pytest.raises(ValueError, match=r"towers must be 1 or 2; received 3\."):
    LocalResponseNormalization(towers=3)
  with pytest.raises(ValueError, match=r"tower must be 'a' or 'b'; received 'c'\."):
    layers.SplitChannels("c")


def test_pooled_size_floor_and_ceil():
  # 55 -> 27 (3x3/2, either rounding); Caffe's 227 input: conv1 55, and a 14-wide map pooled
  # 3x3/2 is 6 rounded down, 7 rounded up (the last window hangs over).
  assert layers.pooled_size(55, 3, 2, False) == layers.pooled_size(55, 3, 2, True) == 27
  assert (layers.pooled_size(14, 3, 2, False), layers.pooled_size(14, 3, 2, True)) == (6, 7)


def _small_net():
  inputs = keras.Input((9, 9, 4), name="images")
  x = layers.ReverseChannels(name="rgb_to_bgr")(inputs)
  x = layers.PlacedConv2D(8, 3, padding="same", activation="relu", name="conv")(x)
  x = LocalResponseNormalization(towers=2, name="lrn")(x)
  x = layers.PlacedMaxPooling2D(3, strides=2, ceil_mode=True, name="pool")(x)
  a = layers.SplitChannels("a", name="split_a")(x)
  b = layers.SplitChannels("b", name="split_b")(x)
  x = keras.layers.Concatenate(name="concat")([b, a])
  x = keras.layers.Flatten(name="flatten")(x)
  outputs = layers.PlacedDense(3, bias_initializer="random_normal", name="fc")(x)
  return keras.Model(inputs, outputs)


def test_keras_files_saved_when_the_layers_lived_in_model_py_still_load(tmp_path):
  """Saved .keras files name each custom layer by its registered name and by the module it was
  defined in; files saved before this module existed say keras_alexnet.model."""
  net = _small_net()
  path = tmp_path / "new.keras"
  net.save(path)
  old = tmp_path / "old.keras"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
    for item in src.infolist():
      data = src.read(item.filename)
      if item.filename == "config.json":
        config = json.loads(data)
        moved = 0
        for layer in config["config"]["layers"]:
          if layer["module"] == "keras_alexnet.layers":
            layer["module"] = "keras_alexnet.model"
            moved += 1
        assert moved == 7   # every custom layer above
        data = json.dumps(config).encode()
      dst.writestr(item, data)
  loaded = keras.saving.load_model(old)
  images = tf.random.normal((2, 9, 9, 4), seed=1) * 50
  np.testing.assert_array_equal(loaded(images).numpy(), net(images).numpy())
  assert [type(l) for l in loaded.layers] == [type(l) for l in net.layers]
