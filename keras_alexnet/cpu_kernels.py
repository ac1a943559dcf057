"""The CPU training speed-ups, behind one switch; the plain TF code is the fallback.

Each speed-up computes exactly what a plain TF op (or TF's own gradient of it) computes, only
faster on a CPU: TF's CPU kernels for these spend most of their time on memory traffic or on
one thread (BUILD_NOTES.md "Benchmark" has the measurements and the why of each).

- `lrn`: tf.nn.local_response_normalization with its forward and its gradient each one XLA
  fusion (TF's CPU LRN and LRNGrad kernels);
- `matmul`: tf.matmul with the input gradient computed as (w @ dy^T)^T (the fc layers);
- `half_of_channels`: a tower's half of the maps with its gradient as a concat with zeros
  (TF's StridedSliceGrad);
- `fused_update`: PaperSGD's update as one XLA fusion per variable.

The switch: `enabled(training)` says whether to take them. The mode is "auto" (the default:
training steps on a machine without GPUs or TPUs, where they were measured to win), "on"
(every training step) or "off" (never: TF's own ops and gradients). Inference (evaluation,
export, prediction: training=False or None) always takes TF's own ops, so a SavedModel holds
no must-compile-with-XLA function. The mode is read when a step is traced: set it
(`set_mode`, or `using(...)` for a block) before building the step.

May import TensorFlow and keras_alexnet.errors only.
"""

import contextlib

import tensorflow as tf

from keras_alexnet import errors

MODES = ("auto", "on", "off")
_mode = "auto"


def set_mode(mode: str) -> None:
  """Chooses when the speed-ups are taken: "auto", "on" or "off" (see the module docstring)."""
  global _mode
  if mode not in MODES:
    raise errors.invalid("cpu_kernels mode", mode, f"one of {MODES}")
  _mode = mode


def mode() -> str:
  return _mode


@contextlib.contextmanager
def using(new_mode: str):
  """`with cpu_kernels.using("off"): ...` traces the block's steps in that mode."""
  previous = _mode
  set_mode(new_mode)
  try:
    yield
  finally:
    set_mode(previous)


def enabled(training) -> bool:
  """Whether a layer called with `training` takes the speed-ups (never outside training)."""
  if not training or _mode == "off":
    return False
  return _mode == "on" or not _accelerators()


def _accelerators():
  return tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")


# ---------------------------------------------------------------------------------------------
# LRN (section 3.3): b = a / d^beta, d = k + alpha * window_sum(a^2).


def lrn(x, depth_radius, bias, alpha, beta):
  """tf.nn.local_response_normalization(x, ...), forward and gradient each one XLA fusion."""
  @tf.custom_gradient
  def fused(x):
    y = _lrn_forward(x, depth_radius, bias, alpha, beta)
    return y, lambda dy: _lrn_gradient(x, y, dy, depth_radius, bias, alpha, beta)
  return fused(x)


def _depth_window_sum(x, depth_radius):
  """sum_{j=i-r}^{i+r} x[..., j] with zeros beyond the edges (the paper's clipped window)."""
  depth = x.shape[-1]
  padded = tf.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[depth_radius, depth_radius]])
  return tf.add_n([padded[..., i:i + depth] for i in range(2 * depth_radius + 1)])


@tf.function(jit_compile=True)
def _lrn_forward(a, depth_radius, bias, alpha, beta):
  """b = a / d^beta as one XLA fusion. TF's CPU kernel computes d^-beta as exp(-beta log d),
  which is slower; so is TF's own op compiled by XLA (XLA:CPU's pow). Agrees with TF's op to
  float32 rounding."""
  d = bias + alpha * _depth_window_sum(a * a, depth_radius)
  return a * _inverse_power(d, beta)


@tf.function(jit_compile=True)
def _lrn_gradient(a, b, grad_b, depth_radius, bias, alpha, beta):
  """dL/da for b = a / d^beta:
  dL/da_j = g_j d_j^-beta - 2 alpha beta a_j window_sum(g b / d)_j (the window is symmetric).

  TF's CPU LRNGrad kernel is a plain loop over the window; this is the same maths as one XLA
  fusion (elementwise ops only, so it agrees with TF's kernel to float32 rounding).
  """
  d = bias + alpha * _depth_window_sum(a * a, depth_radius)
  return (grad_b * _inverse_power(d, beta)
          - 2.0 * alpha * beta * a * _depth_window_sum(grad_b * b / d, depth_radius))


def _inverse_power(d, beta):
  """d^-beta; for the paper's beta = 3/4 as rsqrt(d) * sqrt(rsqrt(d)), since XLA:CPU's pow is
  an exp and a log per element."""
  if beta == 0.75:
    r = tf.math.rsqrt(d)
    return r * tf.sqrt(r)
  return tf.pow(d, -beta)


# ---------------------------------------------------------------------------------------------
# The fc layers and the tower split.


def matmul(x, w):
  """tf.matmul(x, w) for x [batch, features], with the input gradient computed as
  (w @ dy^T)^T: oneDNN runs that form of fc6's input gradient closer to the matmul bound than
  TF's dy @ w^T. The forward and the weight gradient are TF's own forms."""
  @tf.custom_gradient
  def product(x, w):
    def grad(dy):
      return (tf.transpose(tf.matmul(w, dy, transpose_b=True)),
              tf.matmul(x, dy, transpose_a=True))
    return tf.matmul(x, w), grad
  return product(x, w)


def half_of_channels(x, second: bool):
  """x[..., :C/2] or x[..., C/2:], with the gradient written as a concat with zeros: TF's
  StridedSliceGrad is a zero-filled copy on one thread, a concat is one plain copy."""
  half = x.shape[-1] // 2

  @tf.custom_gradient
  def take(x):
    def grad(dy):
      zeros = tf.zeros_like(dy)
      return tf.concat([zeros, dy] if second else [dy, zeros], axis=-1)
    return (x[..., half:] if second else x[..., :half]), grad
  return take(x)


# ---------------------------------------------------------------------------------------------
# PaperSGD's update (section 5).


def fused_update(rule):
  """`rule` (keras_alexnet.optimizer's update of one variable, in place) compiled as one XLA
  fusion per variable: as separate TF ops the paper's rule makes ~15 passes over each
  variable; fused it reads w, v, g once and writes v, w in place.

  A new function per optimizer: a module-level one kept traces that referenced the variables
  of a model deleted since (the benchmark builds several in one process)."""
  return tf.function(rule, jit_compile=True)
