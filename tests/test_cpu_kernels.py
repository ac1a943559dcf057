"""The CPU speed-ups compute what TF's own ops and gradients compute: each one, forward and
gradient, with the switch on against the switch off (and the kernels against TF's ops); and
the switch takes them where it should and never at inference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import cpu_kernels
from keras_alexnet import layers
from keras_alexnet import model as model_lib
from keras_alexnet import optimizer as optimizer_lib


def _ops(fn, *args):
  """(op types, whether an XLA-must-compile function is called) of fn traced on args, with
  the functions it calls."""
  graph_def = tf.function(fn).get_concrete_function(*args).graph.as_graph_def()
  nodes = list(graph_def.node)
  must_compile = False
  for function in graph_def.library.function:
    nodes += function.node_def
    attr = function.attr.get("_XlaMustCompile")
    must_compile |= bool(attr and attr.b)
  must_compile |= any(n.attr["_XlaMustCompile"].b for n in nodes if "_XlaMustCompile" in n.attr)
  return {n.op for n in nodes}, must_compile


def _forward_and_gradient(layer, x, upstream, mode, training=True):
  """The layer's output and the gradients of <output, upstream> wrt x and its weights, in a
  graph traced with the switch in `mode`."""
  with cpu_kernels.using(mode):
    @tf.function
    def run(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
      return y, tape.gradient(y, [x, *layer.trainable_weights], output_gradients=upstream)
    y, grads = run(x)
  return y.numpy(), [g.numpy() for g in grads]


def _input_gradient_ops(layer, x, upstream, mode):
  """_ops of the training gradient of <layer(x), upstream> wrt x, traced in `mode`."""
  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
    return tape.gradient(y, x, output_gradients=upstream)
  with cpu_kernels.using(mode):
    return _ops(gradient, x)


# ---------------------------------------------------------------------------------------------
# The switch.


def test_switch_modes():
  assert cpu_kernels.mode() == "auto"
  # This machine has no GPU: auto takes the speed-ups in training, as "on" does.
  assert not tf.config.list_logical_devices("GPU")
  for mode, training in (("auto", True), ("on", True)):
    with cpu_kernels.using(mode):
      assert cpu_kernels.enabled(training)
  # Never outside training (evaluation, export, prediction), never with "off".
  for mode in cpu_kernels.MODES:
    with cpu_kernels.using(mode):
      assert not cpu_kernels.enabled(False) and not cpu_kernels.enabled(None)
  with cpu_kernels.using("off"):
    assert not cpu_kernels.enabled(True)
  assert cpu_kernels.mode() == "auto"   # restored after each block
  with pytest.raises(ValueError, match=r"cpu_kernels mode must be one of \('auto', 'on', "
                     r"'off'\); received 'fast'\."):
    cpu_kernels.set_mode("fast")
  assert cpu_kernels.mode() == "auto"


# ---------------------------------------------------------------------------------------------
# LRN.


@pytest.mark.parametrize("depth_radius, beta", [(2, 0.75), (1, 0.5)])  # the paper's; tf.pow's
def test_lrn_kernel_equals_tf_op_forward_and_gradient(depth_radius, beta):
  rng = np.random.default_rng(5)
  a = tf.constant(rng.uniform(0, 60, size=(2, 3, 3, 9)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(2, 3, 3, 9)).astype(np.float32))
  params = dict(depth_radius=depth_radius, bias=2.0, alpha=1e-4, beta=beta)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(a)
    fast = cpu_kernels.lrn(a, **params)
    reference = tf.nn.local_response_normalization(a, **params)
  np.testing.assert_allclose(fast.numpy(), reference.numpy(), rtol=1e-6)
  np.testing.assert_allclose(tape.gradient(fast, a, output_gradients=upstream).numpy(),
                             tape.gradient(reference, a, output_gradients=upstream).numpy(),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("towers", [1, 2])
def test_lrn_layer_fast_path_equals_plain_path(towers):
  # Switch on: the layer's XLA-fused forward and gradient; off: TF's LRN and LRNGrad.
  rng = np.random.default_rng(7)
  a = tf.constant(rng.uniform(0, 60, size=(2, 4, 4, 12)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(2, 4, 4, 12)).astype(np.float32))
  layer = layers.LocalResponseNormalization(towers=towers)
  fast, (fast_grad,) = _forward_and_gradient(layer, a, upstream, "on")
  plain, (plain_grad,) = _forward_and_gradient(layer, a, upstream, "off")
  np.testing.assert_allclose(fast, plain, rtol=1e-6)
  np.testing.assert_allclose(fast_grad, plain_grad, rtol=1e-5, atol=1e-6)
  # And the two paths are what they say: TF's op only when off, an XLA function only when on.
  ops, xla = _input_gradient_ops(layer, a, upstream, "off")
  assert {"LRN", "LRNGrad"} <= ops and not xla
  ops, xla = _input_gradient_ops(layer, a, upstream, "on")
  assert not {"LRN", "LRNGrad"} & ops and xla


def test_inference_holds_tf_ops_only_whatever_the_switch():
  """Evaluation and SavedModels call the model with training=False: TF's LRN, no XLA."""
  net = model_lib.alexnet(num_classes=3)
  spec = tf.TensorSpec((1, 224, 224, 3))
  for mode in cpu_kernels.MODES:
    with cpu_kernels.using(mode):
      ops, xla = _ops(lambda x: net(x, training=False), spec)
    assert "LRN" in ops and not xla, mode


# ---------------------------------------------------------------------------------------------
# The tower split and the fc layers.


@pytest.mark.parametrize("tower", ["a", "b"])
def test_tower_split_fast_gradient_equals_the_slice_gradient(tower):
  """Switch on, SplitChannels writes its gradient itself (a concat with zeros): it must put the
  upstream gradient on its own half of the maps and zeros on the other, as TF's slice
  gradient (switch off) does."""
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=(2, 3, 3, 8)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))
  layer = layers.SplitChannels(tower)
  fast, (fast_grad,) = _forward_and_gradient(layer, x, upstream, "on")
  plain, (plain_grad,) = _forward_and_gradient(layer, x, upstream, "off")
  reference = x[..., :4] if tower == "a" else x[..., 4:]
  np.testing.assert_array_equal(fast, reference.numpy())
  np.testing.assert_array_equal(plain, reference.numpy())
  np.testing.assert_array_equal(fast_grad, plain_grad)
  own = slice(0, 4) if tower == "a" else slice(4, 8)
  np.testing.assert_array_equal(fast_grad[..., own], upstream.numpy())
  assert np.count_nonzero(fast_grad) == upstream.numpy().size
  assert "StridedSliceGrad" in _input_gradient_ops(layer, x, upstream, "off")[0]
  assert "StridedSliceGrad" not in _input_gradient_ops(layer, x, upstream, "on")[0]


@pytest.mark.parametrize("devices", [None, ("/cpu:0", "/cpu:1")])  # whole; split over two
@pytest.mark.parametrize("batch_shape", [(5,), (2, 5)])   # the fc layers' [batch, features]; N-D
def test_dense_fast_gradients_equal_the_matmul_gradients(batch_shape, devices):
  """Switch on, the fc layers write their input gradient themselves, as (w @ dy^T)^T: it and
  the weight and bias gradients must be those of the plain path and of keras.layers.Dense's
  own x @ w + b."""
  rng = np.random.default_rng(4)
  x = tf.constant(rng.normal(size=(*batch_shape, 12)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(*batch_shape, 8)).astype(np.float32))
  ours = layers.PlacedDense(8, activation="relu", bias_initializer="random_normal",
                            devices=devices)
  reference = keras.layers.Dense(8, activation="relu")
  ours.build(x.shape)
  reference.build(x.shape)
  reference.set_weights(ours.get_weights())
  fast, fast_grads = _forward_and_gradient(ours, x, upstream, "on")
  plain, plain_grads = _forward_and_gradient(ours, x, upstream, "off")
  keras_out, keras_grads = _forward_and_gradient(reference, x, upstream, "off")
  np.testing.assert_allclose(fast, keras_out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(plain, keras_out, rtol=1e-6, atol=1e-6)
  for g_fast, g_plain, g_keras in zip(fast_grads, plain_grads, keras_grads):
    assert np.any(g_fast != 0)
    np.testing.assert_allclose(g_fast, g_keras, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_plain, g_keras, rtol=1e-5, atol=1e-6)


def test_matmul_kernel_equals_tf_matmul_forward_and_gradients():
  rng = np.random.default_rng(6)
  x = tf.constant(rng.normal(size=(6, 10)).astype(np.float32))
  w = tf.constant(rng.normal(size=(10, 7)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(6, 7)).astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, w])
    fast = cpu_kernels.matmul(x, w)
    reference = tf.matmul(x, w)
  np.testing.assert_array_equal(fast.numpy(), reference.numpy())   # the same op
  for g_fast, g_reference in zip(tape.gradient(fast, [x, w], output_gradients=upstream),
                                 tape.gradient(reference, [x, w], output_gradients=upstream)):
    np.testing.assert_allclose(g_fast.numpy(), g_reference.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# PaperSGD's fused update.


def _train(mode, steps=4):
  rng = np.random.default_rng(8)
  kernel = keras.Variable(rng.normal(size=(5, 3)).astype(np.float32))
  bias = keras.Variable(rng.normal(size=(3,)).astype(np.float32))
  grads = [[tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in (kernel, bias)]
           for _ in range(steps)]
  opt = optimizer_lib.PaperSGD(learning_rate=0.05)
  with cpu_kernels.using(mode):
    step = tf.function(lambda g: opt.apply(g, [kernel, bias]))
    ops, xla = _ops(lambda g: opt.apply(g, [kernel, bias]), grads[0])
    for g in grads:
      step(g)
  return [kernel.numpy(), bias.numpy()] + [v.numpy() for v in opt.velocities], xla


def test_fused_update_equals_plain_update():
  fused, fused_xla = _train("on")
  plain, plain_xla = _train("off")
  assert fused_xla and not plain_xla
  for a, b in zip(fused, plain):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# The whole network: one training step's loss and gradients on both paths.


def test_network_training_step_fast_path_equals_plain_path():
  """The whole switch: one training step's loss and gradients with every speed-up on and off.

  The per-kernel tests above hold each speed-up to TF's op at float32 rounding. Through the
  whole net the gradients agree to ~1e-6 of their norm, except where a ReLU or a max-pool
  window sits within rounding of its kink: the two paths then take different sides and that
  unit's share of the gradient moves (up to 6e-3 of a kernel's gradient norm was seen with
  random weights). Hence 1e-2 of each gradient's norm here, and the loss to 1e-5."""
  keras.utils.set_random_seed(9)
  net = model_lib.alexnet(num_classes=4, dropout=0.0)
  images = tf.constant(np.random.default_rng(9).normal(0, 50, (2, 224, 224, 3)), tf.float32)
  labels = tf.constant([1, 3])

  def gradients():
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        logits = net(images, training=True)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      return loss, tape.gradient(loss, net.trainable_variables)
    loss, grads = step()
    return loss.numpy(), [g.numpy() for g in grads]

  with cpu_kernels.using("on"):
    fast_loss, fast = gradients()
  with cpu_kernels.using("off"):
    plain_loss, plain = gradients()
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-5)
  for variable, g_fast, g_plain in zip(net.trainable_variables, fast, plain):
    norm = np.linalg.norm(g_plain)
    assert norm > 0, variable.path
    assert np.linalg.norm(g_fast - g_plain) < 1e-2 * norm, variable.path
