"""The custom Keras layers of the paper's network: local response normalization (section 3.3),
the split of the maps into the two towers ("GPUs", section 3.2), and the placement of layers on
the paper's two devices; plus the BGR input flip of Caffe-trained weights.

May import keras_alexnet.cpu_kernels (the training speed-ups) and keras_alexnet.errors, nothing
later. The classes' registered Keras names ("keras_alexnet>LocalResponseNormalization", ...) are
what saved .keras files refer to: they must not change.
"""

import keras
import tensorflow as tf

from keras_alexnet import cpu_kernels
from keras_alexnet import errors

# Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
LRN_DEPTH_RADIUS = 2  # n = 5 adjacent maps = the map itself and 2 on each side.
LRN_BIAS = 2.0
LRN_ALPHA = 1e-4
LRN_BETA = 0.75


def pooled_size(size, window, stride, ceil):
  """The side of a 'valid' pooling's output: floor((size - window) / stride) + 1, or with ceil
  (Caffe) rounded up."""
  return -(-(size - window) // stride) + 1 if ceil else (size - window) // stride + 1


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
  float32 and passed on in float32 (the next layer casts back to its compute dtype).
  """

  def __init__(self, depth_radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA,
               beta=LRN_BETA, towers=1, devices=None, **kwargs):
    kwargs.pop("dtype", None)
    super().__init__(dtype="float32", **kwargs)
    if towers not in (1, 2):
      raise errors.invalid("towers", towers, "1 or 2")
    self.depth_radius = depth_radius
    self.bias = bias
    self.alpha = alpha
    self.beta = beta
    self.towers = towers
    self.devices = tuple(devices) if devices else None

  def call(self, inputs, training=None):
    lrn = cpu_kernels.lrn if cpu_kernels.enabled(training) else _lrn
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
class SplitChannels(keras.layers.Layer):
  """Returns one half of the channels: the maps of one tower (a = first, b = second)."""

  def __init__(self, tower, device=None, **kwargs):
    super().__init__(**kwargs)
    if tower not in ("a", "b"):
      raise errors.invalid("tower", tower, "'a' or 'b'")
    self.tower = tower
    self.device = device

  def call(self, inputs, training=None):
    second = self.tower == "b"
    with tf.device(self.device):
      if cpu_kernels.enabled(training):
        return cpu_kernels.half_of_channels(inputs, second)
      half = inputs.shape[-1] // 2
      return inputs[..., half:] if second else inputs[..., :half]

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], input_shape[-1] // 2)

  def get_config(self):
    return {**super().get_config(), "tower": self.tower, "device": self.device}


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
    sides = [None if n is None else pooled_size(n, z, s, True)
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

  def call(self, inputs, training=None):
    if not self.devices or len(self.devices) == 1:
      with tf.device(self.devices[0] if self.devices else None):
        return self._whole_call(inputs, training)
    half = self._units() // 2
    outputs = []
    for device, part in zip(self.devices, (slice(0, half), slice(half, None))):
      with tf.device(device):
        outputs.append(self._partial_call(inputs, part, training))
    return tf.concat(outputs, axis=-1)

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

  def _whole_call(self, inputs, training):
    del training  # The convolutions are TF's own, forward and gradient.
    return keras.layers.Conv2D.call(self, inputs)

  def _partial_call(self, inputs, part, training):
    del training
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

  def _whole_call(self, inputs, training):
    if inputs.shape.rank != 2:
      return keras.layers.Dense.call(self, inputs)
    y = self._matmul(inputs, tf.cast(self.kernel, inputs.dtype), training)
    return self.activation(tf.nn.bias_add(y, tf.cast(self.bias, inputs.dtype)))

  def _partial_call(self, inputs, part, training):
    y = self._matmul(inputs, tf.cast(self.kernel[:, part], inputs.dtype), training)
    y = tf.nn.bias_add(y, tf.cast(self.bias[part], inputs.dtype))
    return self.activation(y)

  @staticmethod
  def _matmul(x, w, training):
    if cpu_kernels.enabled(training) and x.shape.rank == 2:   # its gradient is for 2-D x
      return cpu_kernels.matmul(x, w)
    return tf.matmul(x, w)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class ReverseChannels(keras.layers.Layer):
  """RGB -> BGR (and back): the input order of nets trained in Caffe, which loads with OpenCV."""

  def call(self, inputs):
    return inputs[..., ::-1]

  def compute_output_shape(self, input_shape):
    return input_shape
