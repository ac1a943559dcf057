"""AlexNet as in Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NIPS 2012
(https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks).

`alexnet()` builds a Keras functional model from a `ModelConfig`:

- variant "paper": the network of the paper's Figure 2, with the two towers ("GPUs") as
  explicit branches (split -> two Conv2D -> concatenate). Keras' Conv2D(groups=2) would be the
  same maths, but on CPU TF has no gradient for grouped convolution without XLA and an exported
  SavedModel would then carry must-compile-with-XLA functions.
- variant "one_tower": the single-tower net of Krizhevsky 2014, "One weird trick for
  parallelizing convolutional neural networks" (64-192-384-256-256, no LRN), which torchvision
  also ships.

The model maps a float32 batch of mean-subtracted 224x224x3 crops to logits (or softmax
probabilities). Preprocessing and augmentation live in `keras_alexnet.preprocessing`.

The paper's switches for its ablations (section 3 and 4) are fields of `ModelConfig`:
activation, LRN, overlapping pooling, dropout and the removal of a middle conv layer.
`conv6` adds section 6's "extra sixth convolutional layer over the last pooling layer" (the
"1 CNN*" row of Table 2).
"""

import dataclasses
from typing import Optional, Tuple

import keras
import tensorflow as tf

from keras_alexnet import distribute
from keras_alexnet import errors

IMAGE_SIZE = 224  # Section 2: "random 224x224 patches" of the 256x256 images.
NUM_CLASSES = 1000

# Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
LRN_DEPTH_RADIUS = 2  # n = 5 adjacent maps = the map itself and 2 on each side.
LRN_BIAS = 2.0
LRN_ALPHA = 1e-4
LRN_BETA = 0.75

# Section 5: "zero-mean Gaussian distribution with standard deviation 0.01"; "neuron biases in
# the second, fourth, and fifth convolutional layers, as well as in the fully-connected hidden
# layers, with the constant 1 ... the remaining layers with the constant 0".
INIT_STDDEV = 0.01
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "conv6", "fc6", "fc7")
# conv6 (section 6 gives no shape; BUILD_NOTES "conv6" says why this one): 3x3, 256 maps, same
# padding over pool5's 6x6x256, so fc6 keeps its 9216 inputs; within towers (128 per tower) as
# conv4 and conv5, with bias 1 as they have.
CONV6_WIDTH = 256
CONV6_SIZE = 3

VARIANTS = ("paper", "one_tower")
ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("overlapping", "non_overlapping")
INITS = ("paper", "he")
REMOVABLE_LAYERS = ("conv3", "conv4", "conv5")

# Output maps of each conv layer: (paper, one_tower). The paper's towers each hold half.
_WIDTHS = {
    "paper": {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384, "conv5": 256},
    "one_tower": {"conv1": 64, "conv2": 192, "conv3": 384, "conv4": 256, "conv5": 256},
}
FC_WIDTH = 4096


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything `alexnet()` needs. Defaults are the paper's network."""
  num_classes: int = NUM_CLASSES
  variant: str = "paper"
  activation: str = "relu"          # Section 3.1 / Figure 1 compares relu and tanh.
  lrn: bool = True                  # Section 3.3.
  pooling: str = "overlapping"      # Section 3.4: 3x3/2 (overlapping) vs 2x2/2.
  dropout: float = 0.5              # Section 4.2; 0 turns it off.
  remove: Tuple[str, ...] = ()      # Section 7 depth experiment: any of conv3, conv4, conv5.
  init: str = "paper"               # "paper" (N(0, 0.01), biases 1/0) or "he" (He normal, 0).
  softmax: bool = False             # Logits by default; training uses cross-entropy on logits.
  devices: Optional[Tuple[str, str]] = None  # The paper's two-GPU split: (tower a, tower b).
  input_shape: Tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3)
  # The paper feeds raw pixel values minus the mean (section 2): scale 1. He init assumes
  # unit-variance inputs; 1/64 brings the ~+-128 pixel range there. Part of the model, so
  # evaluation and export apply it without knowing of it.
  input_scale: float = 1.0
  # Pretrained nets of other projects are other values of these (keras_alexnet.convert; README
  # "Pretrained weights"). The defaults are the paper's net. input_scale may then also be 3
  # per-channel factors (torchvision's 1 / (255 std)).
  conv1_padding: Optional[Tuple[int, int, int, int]] = None  # (top, bottom, left, right);
  # None: the variant's ((0, 3, 0, 3) cuda-convnet's overhang, one_tower 2 all round).
  lrn_bias: float = LRN_BIAS        # k; Caffe's bvlc_alexnet: 1.
  lrn_alpha: float = LRN_ALPHA      # TF's alpha, not divided by n: Caffe's 1e-4 is 2e-5 here.
  lrn_towers: int = 2               # 1: each map's window spans all maps (Caffe ignores groups).
  ceil_pooling: bool = False        # Caffe: pooled sizes round up (the last window hangs over).
  bgr: bool = False                 # The model reverses its RGB input to BGR (Caffe's order).
  conv6: bool = False               # Section 6: the sixth conv layer over pool5 ("1 CNN*").


def _check_config(config: ModelConfig, include_top: bool = True):
  def bad(what, got, allowed):
    raise errors.invalid(what, got, allowed)
  if config.variant not in VARIANTS:
    bad("variant", config.variant, f"one of {VARIANTS}")
  if isinstance(config.num_classes, bool) or not isinstance(config.num_classes, int) or config.num_classes < 2:
    bad("num_classes", config.num_classes, "an integer >= 2")
  shape = tuple(config.input_shape)
  top, bottom, left, right = _conv1_padding(config)
  sides = [_pool5_size(n, pad, config) if n else None
           for n, pad in zip(shape[:2], (top + bottom, left + right))]
  if not include_top:
    if len(shape) != 3 or shape[2] != 3 or any(n is not None and n < 1 for n in sides):
      bad("input_shape", config.input_shape, "(H, W, 3) large enough for pool5's 3x3 window "
          "(H, W >= 64 for the paper's net) or with None sides")
  elif config.conv1_padding is None and shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
    bad("input_shape", config.input_shape,
        f"({IMAGE_SIZE}, {IMAGE_SIZE}, 3): the conv/pool stack must end on the 6x6x256 grid "
        "that fc6 is sized for (section 3.5); crop larger images to 224 first")
  elif len(shape) != 3 or shape[2] != 3 or any(n != 6 for n in sides):
    bad(f"input_shape with conv1_padding {config.conv1_padding}", config.input_shape,
        "(H, W, 3) on which the conv/pool stack ends on fc6's 6x6 grid (227 unpadded)")
  if isinstance(config.input_scale, tuple):
    if len(config.input_scale) != 3 or not all(
        isinstance(v, (int, float)) and v > 0 for v in config.input_scale):
      bad("input_scale", config.input_scale, "a number > 0 or 3 of them (one per channel)")
  elif not (isinstance(config.input_scale, (int, float)) and config.input_scale > 0):
    bad("input_scale", config.input_scale, "a number > 0")
  if config.lrn_towers not in (1, 2):
    bad("lrn_towers", config.lrn_towers, "1 or 2")
  if config.ceil_pooling and config.pooling != "overlapping":
    bad("ceil_pooling with pooling", config.pooling, "'overlapping' (Caffe's 3x3/2)")
  if config.activation not in ACTIVATIONS:
    bad("activation", config.activation, f"one of {ACTIVATIONS}")
  if config.pooling not in POOLINGS:
    bad("pooling", config.pooling, f"one of {POOLINGS}")
  if config.init not in INITS:
    bad("init", config.init, f"one of {INITS}")
  if config.init == "he" and config.activation != "relu":
    bad("init 'he' (derived for ReLU units) with activation", config.activation,
        "'relu'; use init='paper' for tanh")
  if not 0.0 <= config.dropout < 1.0:
    bad("dropout", config.dropout, "a rate in [0, 1)")
  for name in config.remove:
    if name not in REMOVABLE_LAYERS:
      bad("remove", tuple(config.remove),
          f"a subset of {REMOVABLE_LAYERS} (conv1, conv2 and the pools fix the 6x6 grid fc6 "
          "expects)")
  if len(set(config.remove)) == len(REMOVABLE_LAYERS):
    bad("remove", tuple(config.remove), "at most two of conv3, conv4, conv5")
  if not isinstance(config.conv6, bool):
    bad("conv6", config.conv6, "True or False")
  if config.devices is not None:
    if config.variant != "paper":
      bad("devices (the two-tower split)", config.devices, "None for variant 'one_tower'")
    if len(config.devices) != 2 or config.devices[0] == config.devices[1]:
      bad("devices", config.devices, "two distinct device names, e.g. ('/gpu:0', '/gpu:1')")
    missing = distribute.missing_devices(config.devices)
    if missing:
      raise ValueError(
          f"The two-tower split needs two devices; {missing} not found among "
          f"{distribute.logical_device_names()}. On a CPU-only machine, "
          "split the CPU with tf.config.set_logical_device_configuration before building.")


def _conv1_padding(config: ModelConfig):
  """(top, bottom, left, right) zeros around the input of conv1."""
  if config.conv1_padding is not None:
    return tuple(config.conv1_padding)
  return (0, 3, 0, 3) if config.variant == "paper" else (2, 2, 2, 2)


def _pooled(size, window, stride, ceil):
  return -(-(size - window) // stride) + 1 if ceil else (size - window) // stride + 1


def _pool5_size(size, padding, config: ModelConfig) -> int:
  """The side of pool5's grid for an input side `size` padded by `padding` zeros in all (6 is
  what fc6 is sized for)."""
  window = 3 if config.pooling == "overlapping" else 2
  size = (size + padding - 11) // 4 + 1                          # conv1; conv2-5 keep sizes
  for _ in range(3):
    size = _pooled(size, window, 2, config.ceil_pooling)
  return size


def _per_tower(fn, inputs, devices):
  """Applies `fn` to each tower's half of the channels (on its device) and concatenates."""
  half = inputs.shape[-1] // 2
  devices = devices or (None, None)
  with tf.device(devices[0]):
    a = fn(inputs[..., :half])
  with tf.device(devices[1]):
    b = fn(inputs[..., half:])
  return tf.concat([a, b], axis=-1)


def _lrn(x, depth_radius, bias, alpha, beta):
  return tf.nn.local_response_normalization(
      x, depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta)


def _depth_window_sum(x, depth_radius):
  """sum_{j=i-r}^{i+r} x[..., j] with zeros beyond the edges (the paper's clipped window)."""
  depth = x.shape[-1]
  padded = tf.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[depth_radius, depth_radius]])
  return tf.add_n([padded[..., i:i + depth] for i in range(2 * depth_radius + 1)])


@tf.function(jit_compile=True)
def _lrn_forward(a, depth_radius, bias, alpha, beta):
  """b = a / d^beta, d = k + alpha * window_sum(a^2): tf.nn.local_response_normalization's
  maths as one XLA fusion, for training only.

  TF's CPU LRN kernel computes d^-beta as exp(-beta log d) and took 67 ms for lrn1 at batch
  64 on 2 cores; this takes 21 ms and agrees with it to 4e-7 relative (float32 rounding).
  TF's own op compiled by XLA is slower still (98 ms: XLA:CPU's pow).
  """
  d = bias + alpha * _depth_window_sum(a * a, depth_radius)
  return a * _inverse_power(d, beta)


@tf.function(jit_compile=True)
def _lrn_gradient(a, b, grad_b, depth_radius, bias, alpha, beta):
  """dL/da for b = a / d^beta, d = k + alpha * window_sum(a^2):
  dL/da_j = g_j d_j^-beta - 2 alpha beta a_j window_sum(g b / d)_j (the window is symmetric).

  TF's CPU LRNGrad kernel is a plain loop over the window and took about 70% of a CPU
  training step here; this is the same maths as one XLA fusion (elementwise ops only, so
  XLA's float32 result agrees with TF's kernel to rounding).
  """
  d = bias + alpha * _depth_window_sum(a * a, depth_radius)
  return (grad_b * _inverse_power(d, beta)
          - 2.0 * alpha * beta * a * _depth_window_sum(grad_b * b / d, depth_radius))


def _inverse_power(d, beta):
  """d^-beta. For the paper's beta = 3/4 as rsqrt(d) * sqrt(rsqrt(d)): XLA:CPU's pow (an exp
  and a log per element) made the gradient of lrn1 3x slower (170 vs 54 ms at batch 64)."""
  if beta == 0.75:
    r = tf.math.rsqrt(d)
    return r * tf.sqrt(r)
  return tf.pow(d, -beta)


def _lrn_training(x, depth_radius, bias, alpha, beta):
  """The LRN of training steps: forward and gradient each one XLA fusion (LRN cost 0.34 s of
  a 1.97 s CPU step at batch 64 with TF's forward kernel, 0.14 s of 1.57 s fused).

  Inference graphs (evaluation, SavedModels) call tf.nn.local_response_normalization itself,
  so they hold the TF op and no XLA-compiled function; tests hold both paths to TF's op.
  """
  @tf.custom_gradient
  def lrn(x):
    y = _lrn_forward(x, depth_radius, bias, alpha, beta)
    return y, lambda dy: _lrn_gradient(x, y, dy, depth_radius, bias, alpha, beta)
  return lrn(x)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class LocalResponseNormalization(keras.layers.Layer):
  """The paper's local response normalization (section 3.3), always in float32.

  b[x,y,i] = a[x,y,i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[x,y,j]^2)^beta

  with k=2, n=5, alpha=1e-4, beta=0.75. tf.nn.local_response_normalization computes exactly
  this with depth_radius = n // 2 = 2 and alpha as is: TF's and the paper's alpha are NOT
  divided by n. Caffe and PyTorch divide alpha by n, so their alpha=5e-4 is the paper's 1e-4.

  towers=2 normalizes each half of the maps on its own, as the paper's two GPUs did: the sum
  over "adjacent kernel maps" never crosses from one GPU's maps to the other's.

  The layer's dtype is pinned to float32: TF's LRN has no bfloat16 CPU kernel and fails under
  XLA in float16/bfloat16, so under a mixed-precision policy inputs are cast up, normalized in
  float32, and the next layer casts back down.
  """

  def __init__(self, depth_radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA,
               beta=LRN_BETA, towers=1, devices=None, **kwargs):
    kwargs.pop("dtype", None)
    super().__init__(dtype="float32", **kwargs)
    if towers not in (1, 2):
      raise ValueError(f"towers must be 1 or 2; received {towers!r}.")
    self.depth_radius = depth_radius
    self.bias = bias
    self.alpha = alpha
    self.beta = beta
    self.towers = towers
    self.devices = tuple(devices) if devices else None

  def call(self, inputs, training=None):
    lrn = _lrn_training if training else _lrn
    params = (self.depth_radius, self.bias, self.alpha, self.beta)
    if self.towers == 2 and self.devices:
      return _per_tower(lambda x: lrn(x, *params), inputs, self.devices)
    if self.towers == 2:
      # Each tower's half of the maps as its own row: [N, H, W, 2C'] -> [N, H, 2W, C'] is a
      # free reshape, and the depth window then never crosses from one tower to the other.
      shape = tf.shape(inputs)
      halves = tf.reshape(inputs, [shape[0], shape[1], 2 * shape[2], inputs.shape[-1] // 2])
      return tf.reshape(lrn(halves, *params), tf.shape(inputs))
    return lrn(inputs, *params)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
            "alpha": self.alpha, "beta": self.beta, "towers": self.towers,
            "devices": self.devices}


@keras.saving.register_keras_serializable(package="keras_alexnet")
class PlacedMaxPooling2D(keras.layers.MaxPooling2D):
  """keras.layers.MaxPooling2D that, given two devices, pools each tower's maps on its own
  device (pooling is per map, so the result is the same)."""

  def __init__(self, *args, devices=None, ceil_mode=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.devices = tuple(devices) if devices else None
    self.ceil_mode = ceil_mode

  def call(self, inputs):
    if self.ceil_mode:
      inputs = self._pad_for_ceil(inputs)
    if self.devices:
      return _per_tower(super().call, inputs, self.devices)
    return super().call(inputs)

  def _pad_for_ceil(self, inputs):
    """Caffe's ceil-mode pooling: the bottom/right are padded with the dtype's lowest value
    (never the maximum) up to the size whose 'valid' pooling has ceil((n - z) / s) + 1 rows."""
    shape = tf.shape(inputs)
    pads = [(-(shape[1 + i] - self.pool_size[i])) % self.strides[i] for i in range(2)]
    return tf.pad(inputs, [[0, 0], [0, pads[0]], [0, pads[1]], [0, 0]],
                  constant_values=inputs.dtype.min)

  def compute_output_shape(self, input_shape):
    if not self.ceil_mode:
      return super().compute_output_shape(input_shape)
    sides = [None if n is None else _pooled(n, z, s, True)
             for n, z, s in zip(input_shape[1:3], self.pool_size, self.strides)]
    return (input_shape[0], *sides, input_shape[3])

  def get_config(self):
    return {**super().get_config(), "devices": self.devices, "ceil_mode": self.ceil_mode}


class _Placed:
  """Mixin for Conv2D/Dense: computes on one device, or splits its output units in halves
  over two devices as the paper's layers that span both GPUs do (conv1, conv3, fc6-fc8).

  The variables stay whole (on the first device), so a placed model has the same weights,
  names and maths as the unplaced one and checkpoints move freely between them.
  """

  def _placed_init(self, devices):
    self.devices = tuple(devices) if devices else None

  def build(self, input_shape):
    with tf.device(self.devices[0] if self.devices else None):
      super().build(input_shape)

  def call(self, inputs, *args, **kwargs):
    if not self.devices or len(self.devices) == 1:
      with tf.device(self.devices[0] if self.devices else None):
        return self._whole_call(inputs, *args, **kwargs)
    half = self._units() // 2
    outputs = []
    for device, part in zip(self.devices, (slice(0, half), slice(half, None))):
      with tf.device(device):
        outputs.append(self._partial_call(inputs, part))
    return tf.concat(outputs, axis=-1)

  def _whole_call(self, inputs, *args, **kwargs):
    return super().call(inputs, *args, **kwargs)

  def get_config(self):
    return {**super().get_config(), "devices": self.devices}


@keras.saving.register_keras_serializable(package="keras_alexnet")
class PlacedConv2D(_Placed, keras.layers.Conv2D):
  """keras.layers.Conv2D that can run on a named device or split over two."""

  def __init__(self, *args, devices=None, **kwargs):
    super().__init__(*args, **kwargs)
    self._placed_init(devices)

  def _units(self):
    return self.filters

  def _partial_call(self, inputs, part):
    y = tf.nn.conv2d(inputs, tf.cast(self.kernel[..., part], inputs.dtype),
                     strides=self.strides, padding=self.padding.upper())
    y = tf.nn.bias_add(y, tf.cast(self.bias[part], inputs.dtype))
    return self.activation(y)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class PlacedDense(_Placed, keras.layers.Dense):
  """keras.layers.Dense that can run on a named device or split over two."""

  def __init__(self, *args, devices=None, **kwargs):
    super().__init__(*args, **kwargs)
    self._placed_init(devices)

  def _units(self):
    return self.units

  def _whole_call(self, inputs):
    if inputs.shape.rank != 2:   # _matmul's gradient is written for [batch, features]
      return super()._whole_call(inputs)
    y = _matmul(inputs, tf.cast(self.kernel, inputs.dtype))
    return self.activation(tf.nn.bias_add(y, tf.cast(self.bias, inputs.dtype)))

  def _partial_call(self, inputs, part):
    y = _matmul(inputs, tf.cast(self.kernel[:, part], inputs.dtype))
    y = tf.nn.bias_add(y, tf.cast(self.bias[part], inputs.dtype))
    return self.activation(y)


def _matmul(x, w):
  """x @ w, with the input gradient computed as (w @ dy^T)^T: oneDNN's dy @ w^T ran fc6's at
  0.43-0.46 of the matmul bound on the 2-core CPU here, this form at 0.62-0.78 (42 vs 24-31
  ms at batch 64); the forward and the weight gradient are TF's own forms."""
  @tf.custom_gradient
  def matmul(x, w):
    def grad(dy):
      return (tf.transpose(tf.matmul(w, dy, transpose_b=True)),
              tf.matmul(x, dy, transpose_a=True))
    return tf.matmul(x, w), grad
  return matmul(x, w)


def _half_of_channels(x, second: bool):
  """x[..., :C/2] or x[..., C/2:], with the gradient written as a concat with zeros: TF's
  StridedSliceGrad (a zero-filled copy, single-threaded) took 270 ms of a 1.9 s CPU training
  step at batch 64 for the six tower inputs; a concat is one plain copy."""
  half = x.shape[-1] // 2

  @tf.custom_gradient
  def take(x):
    def grad(dy):
      zeros = tf.zeros_like(dy)
      return tf.concat([zeros, dy] if second else [dy, zeros], axis=-1)
    return (x[..., half:] if second else x[..., :half]), grad
  return take(x)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class SplitChannels(keras.layers.Layer):
  """Returns one half of the channels: the maps of one tower (a = first, b = second)."""

  def __init__(self, tower, device=None, **kwargs):
    super().__init__(**kwargs)
    if tower not in ("a", "b"):
      raise ValueError(f"tower must be 'a' or 'b'; received {tower!r}.")
    self.tower = tower
    self.device = device

  def call(self, inputs):
    with tf.device(self.device):
      return _half_of_channels(inputs, self.tower == "b")

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], input_shape[-1] // 2)

  def get_config(self):
    return {**super().get_config(), "tower": self.tower, "device": self.device}


@keras.saving.register_keras_serializable(package="keras_alexnet")
class ReverseChannels(keras.layers.Layer):
  """RGB -> BGR (and back): the input order of nets trained in Caffe, which loads with OpenCV."""

  def call(self, inputs):
    return inputs[..., ::-1]

  def compute_output_shape(self, input_shape):
    return input_shape


def _initializers(config: ModelConfig, name: str):
  if config.init == "he":
    return keras.initializers.HeNormal(), keras.initializers.Zeros()
  bias = 1.0 if name.split("_")[0] in BIAS_ONE_LAYERS else 0.0
  return (keras.initializers.RandomNormal(stddev=INIT_STDDEV),
          keras.initializers.Constant(bias))


def alexnet(config: Optional[ModelConfig] = None, include_top: bool = True,
            **overrides) -> keras.Model:
  """Builds AlexNet; `alexnet(num_classes=10)` is `alexnet(ModelConfig(num_classes=10))`.

  include_top=False ends on pool5, for any input_shape whose grid is still >= 1 there (None
  sides allowed): the convolutional trunk of keras_alexnet.applications.

  Returns a functional keras.Model from float32 [N, 224, 224, 3] (mean-subtracted) to
  logits [N, num_classes] (probabilities if config.softmax). Layers carry the paper's names:
  conv1, lrn1, pool1, conv2_a/conv2_b, lrn2, pool2, conv3, conv4_a/b, conv5_a/b, pool5,
  (with conv6: conv6_a/b), fc6, dropout6, fc7, dropout7, fc8.
  """
  config = dataclasses.replace(config or ModelConfig(), **overrides)
  _check_config(config, include_top)
  widths = _WIDTHS[config.variant]
  towers = config.variant == "paper"
  dev_a, dev_b = config.devices or (None, None)
  both = config.devices  # Layers that span both GPUs split their output units over them.

  def conv(name, filters, size, stride=1, padding="same", devices=None):
    kernel_init, bias_init = _initializers(config, name)
    return PlacedConv2D(filters, size, strides=stride, padding=padding,
                        activation=config.activation, kernel_initializer=kernel_init,
                        bias_initializer=bias_init, devices=devices, name=name)

  def pool(name):
    # Section 3.4: overlapping pooling s=2, z=3; the baseline s=z=2 gives the same grid
    # sizes here (55 -> 27 -> 13 -> 6), so fc6 is unchanged.
    size = 3 if config.pooling == "overlapping" else 2
    return PlacedMaxPooling2D(size, strides=2, devices=both, ceil_mode=config.ceil_pooling,
                              name=name)

  def lrn(name):
    return LocalResponseNormalization(bias=config.lrn_bias, alpha=config.lrn_alpha,
                                      towers=config.lrn_towers, devices=both, name=name)

  def split(x, name):
    """The maps of tower a and of tower b, each on its device."""
    return (SplitChannels("a", device=dev_a, name=f"{name}_split_a")(x),
            SplitChannels("b", device=dev_b, name=f"{name}_split_b")(x))

  def in_towers(pair, name, filters, size):
    """One conv layer as two towers, each seeing only its own tower's input maps."""
    return (conv(f"{name}_a", filters // 2, size, devices=(dev_a,) if dev_a else None)(pair[0]),
            conv(f"{name}_b", filters // 2, size, devices=(dev_b,) if dev_b else None)(pair[1]))

  def concat(pair, name):
    return keras.layers.Concatenate(name=f"{name}_concat")(list(pair))

  inputs = keras.Input(tuple(config.input_shape), name="images")
  x = inputs
  if config.bgr:
    x = ReverseChannels(name="rgb_to_bgr")(x)
  if config.input_scale != 1.0:
    # Per channel (a tuple) in the model's own channel order.
    scale = list(config.input_scale) if isinstance(config.input_scale, tuple) else config.input_scale
    x = keras.layers.Rescaling(scale, name="input_scale")(x)

  # conv1: 96@11x11/4 -> 55x55. (224 - 11) / 4 + 1 is not whole; the paper's cuda-convnet
  # rounds the module count up, i.e. the last window hangs 3 pixels over the right and bottom
  # edges, reading zeros. Padding 3 on those two sides reproduces that exactly.
  # "One weird trick" / torchvision: padding 2 on every side; Caffe's bvlc_alexnet: none, on
  # 227x227 inputs. (_conv1_padding.)
  top, bottom, left, right = _conv1_padding(config)
  if top or bottom or left or right:
    x = keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name="conv1_pad")(x)
  x = conv("conv1", widths["conv1"], 11, stride=4, padding="valid", devices=both)(x)
  if config.lrn and towers:
    x = lrn("lrn1")(x)
  x = pool("pool1")(x)                                             # 27x27

  # conv2: 256@5x5, each tower's 128 kernels see only its own 48 maps of conv1.
  if towers:
    x = concat(in_towers(split(x, "conv2"), "conv2", widths["conv2"], 5), "conv2")
  else:
    x = conv("conv2", widths["conv2"], 5)(x)
  if config.lrn and towers:
    x = lrn("lrn2")(x)
  x = pool("pool2")(x)                                             # 13x13

  # conv3: 384@3x3 sees all 256 maps of conv2, across towers.
  if "conv3" not in config.remove:
    x = conv("conv3", widths["conv3"], 3, devices=both)(x)
  # conv4: 384@3x3 and conv5: 256@3x3, within towers (192 and 128 kernels per tower): conv5
  # of a tower reads conv4 of the same tower directly, with no concat and split between.
  pair, last = None, None
  for name in ("conv4", "conv5"):
    if name in config.remove:
      continue
    if towers:
      pair = in_towers(pair or split(x, name), name, widths[name], 3)
      last = name
    else:
      x = conv(name, widths[name], 3)(x)
  if pair:
    x = concat(pair, last)
  x = pool("pool5")(x)                                             # 6x6
  if config.conv6:   # Section 6: "an extra sixth convolutional layer over the last pooling layer"
    if towers:
      x = concat(in_towers(split(x, "conv6"), "conv6", CONV6_WIDTH, CONV6_SIZE), "conv6")
    else:
      x = conv("conv6", CONV6_WIDTH, CONV6_SIZE)(x)               # still 6x6x256
  if not include_top:
    return keras.Model(inputs, x, name="alexnet_trunk")

  x = keras.layers.Flatten(name="flatten")(x)
  for name in ("fc6", "fc7"):
    kernel_init, bias_init = _initializers(config, name)
    x = PlacedDense(FC_WIDTH, activation=config.activation, kernel_initializer=kernel_init,
                    bias_initializer=bias_init, devices=both, name=name)(x)
    if config.dropout:
      x = keras.layers.Dropout(config.dropout, name=f"dropout{name[2:]}")(x)
  kernel_init, bias_init = _initializers(config, "fc8")
  outputs = PlacedDense(config.num_classes, kernel_initializer=kernel_init,
                        bias_initializer=bias_init, devices=both, name="fc8")(x)
  if config.softmax:
    # Float32 so that probabilities sum to 1 under mixed precision too.
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(outputs)
  name = "alexnet" if config.variant == "paper" else "alexnet_one_tower"
  return keras.Model(inputs, outputs, name=name)


def flops_per_image(model: keras.Model) -> int:
  """Forward-pass FLOPs of one image, 2 per multiply-add, from the conv and dense layers'
  actual shapes (about 1.45 GFLOP for the paper net; training is about 3x that)."""
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      _, h, w, c_out = layer.output.shape
      kh, kw, c_in, _ = layer.kernel.shape
      total += 2 * h * w * c_out * kh * kw * c_in
    elif isinstance(layer, keras.layers.Dense):
      total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
  return int(total)
