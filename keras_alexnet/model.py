"""AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks", NIPS 2012
(https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks).

`alexnet()` builds a Keras functional model from a `ModelConfig`:

- variant "paper": the network of the paper's Figure 2, with the two towers ("GPUs",
  section 3.2) as explicit branches (split -> two Conv2D -> concatenate). Keras'
  Conv2D(groups=2) would be the same maths, but on CPU TF has no gradient for grouped
  convolution without XLA and an exported SavedModel would then carry must-compile-with-XLA
  functions.
- variant "one_tower": the single-tower net of Krizhevsky 2014, "One weird trick for
  parallelizing convolutional neural networks" (64-192-384-256-256, no LRN), which torchvision
  also ships.

The model maps a float32 batch of mean-subtracted 224x224x3 crops to logits (or softmax
probabilities). Preprocessing and augmentation live in `keras_alexnet.preprocessing`.

The paper's switches for its ablations (section 3 and 4) are fields of `ModelConfig`:
activation, LRN, overlapping pooling, dropout and the removal of a middle conv layer.
`conv6` adds section 6's "extra sixth convolutional layer over the last pooling layer" (the
"1 CNN*" row of Table 2).

This module is the network only. Its layers (LRN, the tower split, the placement on two
devices) are in keras_alexnet.layers; the CPU training speed-ups those layers may take, in
keras_alexnet.cpu_kernels. May import keras_alexnet.layers, decoding (the input size), distribute
and errors.
"""

import dataclasses
from typing import Optional, Tuple

import keras

from keras_alexnet import decoding
from keras_alexnet import distribute
from keras_alexnet import errors
from keras_alexnet import layers

NUM_CLASSES = 1000

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
  input_shape: Tuple[int, int, int] = (decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3)
  # The paper feeds raw pixel values minus the mean (section 2): scale 1. He init assumes
  # unit-variance inputs; 1/64 brings the ~+-128 pixel range there. Part of the model, so
  # evaluation and export apply it without knowing of it.
  input_scale: float = 1.0
  # Pretrained nets of other projects are other values of these (keras_alexnet.convert; README
  # "Pretrained weights"). The defaults are the paper's net. input_scale may then also be 3
  # per-channel factors (torchvision's 1 / (255 std)).
  conv1_padding: Optional[Tuple[int, int, int, int]] = None  # (top, bottom, left, right);
  # None: the variant's ((0, 3, 0, 3) cuda-convnet's overhang, one_tower 2 all round).
  lrn_bias: float = layers.LRN_BIAS   # k; Caffe's bvlc_alexnet: 1.
  lrn_alpha: float = layers.LRN_ALPHA  # TF's alpha, not divided by n: Caffe's 1e-4 is 2e-5 here.
  lrn_towers: int = 2               # 1: each map's window spans all maps (Caffe ignores groups).
  ceil_pooling: bool = False        # Caffe: pooled sizes round up (the last window hangs over).
  bgr: bool = False                 # The model reverses its RGB input to BGR (Caffe's order).
  conv6: bool = False               # Section 6: the sixth conv layer over pool5 ("1 CNN*").


def _check_config(config: ModelConfig, include_top: bool = True):
  """Raises a ValueError naming the first field of `config` that `alexnet()` cannot build."""
  if config.variant not in VARIANTS:
    raise errors.invalid("variant", config.variant, f"one of {VARIANTS}")
  if (isinstance(config.num_classes, bool) or not isinstance(config.num_classes, int)
      or config.num_classes < 2):
    raise errors.invalid("num_classes", config.num_classes, "an integer >= 2")
  shape = tuple(config.input_shape)
  top, bottom, left, right = _conv1_padding(config)
  sides = [_pool5_size(n, pad, config) if n else None
           for n, pad in zip(shape[:2], (top + bottom, left + right))]
  size = decoding.IMAGE_SIZE
  if not include_top:
    if len(shape) != 3 or shape[2] != 3 or any(n is not None and n < 1 for n in sides):
      raise errors.invalid(
          "input_shape", config.input_shape, "(H, W, 3) large enough for pool5's 3x3 window "
          "(H, W >= 64 for the paper's net) or with None sides")
  elif config.conv1_padding is None and shape != (size, size, 3):
    raise errors.invalid(
        "input_shape", config.input_shape,
        f"({size}, {size}, 3): the conv/pool stack must end on the 6x6x256 grid "
        "that fc6 is sized for (section 3.5); crop larger images to 224 first")
  elif len(shape) != 3 or shape[2] != 3 or any(n != 6 for n in sides):
    raise errors.invalid(
        f"input_shape with conv1_padding {config.conv1_padding}", config.input_shape,
        "(H, W, 3) on which the conv/pool stack ends on fc6's 6x6 grid (227 unpadded)")
  if isinstance(config.input_scale, tuple):
    if len(config.input_scale) != 3 or not all(
        isinstance(v, (int, float)) and v > 0 for v in config.input_scale):
      raise errors.invalid("input_scale", config.input_scale,
                           "a number > 0 or 3 of them (one per channel)")
  elif not (isinstance(config.input_scale, (int, float)) and config.input_scale > 0):
    raise errors.invalid("input_scale", config.input_scale, "a number > 0")
  if config.lrn_towers not in (1, 2):
    raise errors.invalid("lrn_towers", config.lrn_towers, "1 or 2")
  if config.ceil_pooling and config.pooling != "overlapping":
    raise errors.invalid("ceil_pooling with pooling", config.pooling,
                         "'overlapping' (Caffe's 3x3/2)")
  if config.activation not in ACTIVATIONS:
    raise errors.invalid("activation", config.activation, f"one of {ACTIVATIONS}")
  if config.pooling not in POOLINGS:
    raise errors.invalid("pooling", config.pooling, f"one of {POOLINGS}")
  if config.init not in INITS:
    raise errors.invalid("init", config.init, f"one of {INITS}")
  if config.init == "he" and config.activation != "relu":
    raise errors.invalid("init 'he' (derived for ReLU units) with activation",
                         config.activation, "'relu'; use init='paper' for tanh")
  if not 0.0 <= config.dropout < 1.0:
    raise errors.invalid("dropout", config.dropout, "a rate in [0, 1)")
  for name in config.remove:
    if name not in REMOVABLE_LAYERS:
      raise errors.invalid(
          "remove", tuple(config.remove),
          f"a subset of {REMOVABLE_LAYERS} (conv1, conv2 and the pools fix the 6x6 grid fc6 "
          "expects)")
  if len(set(config.remove)) == len(REMOVABLE_LAYERS):
    raise errors.invalid("remove", tuple(config.remove), "at most two of conv3, conv4, conv5")
  if not isinstance(config.conv6, bool):
    raise errors.invalid("conv6", config.conv6, "True or False")
  if config.devices is not None:
    if config.variant != "paper":
      raise errors.invalid("devices (the two-tower split)", config.devices,
                           "None for variant 'one_tower'")
    if len(config.devices) != 2 or config.devices[0] == config.devices[1]:
      raise errors.invalid("devices", config.devices,
                           "two distinct device names, e.g. ('/gpu:0', '/gpu:1')")
    missing = distribute.missing_devices(config.devices)
    if missing:
      raise ValueError(
          f"The two-tower split needs two devices; {missing} not found among "
          f"{distribute.logical_device_names()}. On a CPU-only machine, "
          "split the CPU with tf.config.set_logical_device_configuration before building.")


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
    # Section 3.1: ReLU after every conv layer (tanh for Figure 1); init: section 5.
    kernel_init, bias_init = _initializers(config, name)
    return layers.PlacedConv2D(filters, size, strides=stride, padding=padding,
                               activation=config.activation, kernel_initializer=kernel_init,
                               bias_initializer=bias_init, devices=devices, name=name)

  def pool(name):
    # Section 3.4: overlapping pooling s=2, z=3; the baseline s=z=2 gives the same grid
    # sizes here (55 -> 27 -> 13 -> 6), so fc6 is unchanged.
    size = 3 if config.pooling == "overlapping" else 2
    return layers.PlacedMaxPooling2D(size, strides=2, devices=both,
                                     ceil_mode=config.ceil_pooling, name=name)

  def lrn(name):
    # Section 3.3, after the ReLU of conv1 and conv2, per tower.
    return layers.LocalResponseNormalization(bias=config.lrn_bias, alpha=config.lrn_alpha,
                                             towers=config.lrn_towers, devices=both,
                                             name=name)

  def split(x, name):
    """The maps of tower a and of tower b, each on its device."""
    return (layers.SplitChannels("a", device=dev_a, name=f"{name}_split_a")(x),
            layers.SplitChannels("b", device=dev_b, name=f"{name}_split_b")(x))

  def in_towers(pair, name, filters, size):
    """One conv layer as two towers, each seeing only its own tower's input maps."""
    return (conv(f"{name}_a", filters // 2, size, devices=(dev_a,) if dev_a else None)(pair[0]),
            conv(f"{name}_b", filters // 2, size, devices=(dev_b,) if dev_b else None)(pair[1]))

  def concat(pair, name):
    return keras.layers.Concatenate(name=f"{name}_concat")(list(pair))

  inputs = keras.Input(tuple(config.input_shape), name="images")
  x = inputs
  if config.bgr:
    x = layers.ReverseChannels(name="rgb_to_bgr")(x)
  if config.input_scale != 1.0:
    # Per channel (a tuple) in the model's own channel order.
    scale = config.input_scale
    scale = list(scale) if isinstance(scale, tuple) else scale
    x = keras.layers.Rescaling(scale, name="input_scale")(x)

  # conv1 (section 3.5): 96 kernels of 11x11x3, stride 4 -> 55x55, spanning both GPUs.
  # (224 - 11) / 4 + 1 is not whole; the paper's cuda-convnet rounds the module count up,
  # i.e. the last window hangs 3 pixels over the right and bottom edges, reading zeros.
  # Padding 3 on those two sides reproduces that exactly. "One weird trick" / torchvision:
  # padding 2 on every side; Caffe's bvlc_alexnet: none, on 227x227 inputs. (_conv1_padding.)
  top, bottom, left, right = _conv1_padding(config)
  if top or bottom or left or right:
    x = keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name="conv1_pad")(x)
  x = conv("conv1", widths["conv1"], 11, stride=4, padding="valid", devices=both)(x)
  # lrn1 (section 3.3), pool1 (section 3.4) -> 27x27.
  if config.lrn and towers:
    x = lrn("lrn1")(x)
  x = pool("pool1")(x)

  # conv2 (section 3.5): 256 kernels of 5x5x48; each tower's 128 see only its own GPU's 48
  # maps of conv1 (section 3.2). lrn2, pool2 -> 13x13.
  if towers:
    x = concat(in_towers(split(x, "conv2"), "conv2", widths["conv2"], 5), "conv2")
  else:
    x = conv("conv2", widths["conv2"], 5)(x)
  if config.lrn and towers:
    x = lrn("lrn2")(x)
  x = pool("pool2")(x)

  # conv3 (section 3.5): 384 kernels of 3x3x256, seeing all maps of conv2, across the GPUs.
  if "conv3" not in config.remove:
    x = conv("conv3", widths["conv3"], 3, devices=both)(x)

  # conv4: 384 kernels of 3x3x192 and conv5: 256 of 3x3x192, within towers (192 and 128 per
  # tower, section 3.5): conv5 of a tower reads conv4 of the same tower directly, with no
  # concat and split between. Section 7's depth experiment removes any of conv3-conv5.
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
  # pool5 -> 6x6x256.
  x = pool("pool5")(x)

  # conv6 (section 6): "an extra sixth convolutional layer over the last pooling layer".
  if config.conv6:
    if towers:
      x = concat(in_towers(split(x, "conv6"), "conv6", CONV6_WIDTH, CONV6_SIZE), "conv6")
    else:
      x = conv("conv6", CONV6_WIDTH, CONV6_SIZE)(x)               # still 6x6x256
  if not include_top:
    return keras.Model(inputs, x, name="alexnet_trunk")

  # fc6, fc7 (section 3.5): 4096 neurons each, spanning both GPUs; dropout 0.5 after each
  # (section 4.2).
  x = keras.layers.Flatten(name="flatten")(x)
  for name in ("fc6", "fc7"):
    kernel_init, bias_init = _initializers(config, name)
    x = layers.PlacedDense(FC_WIDTH, activation=config.activation,
                           kernel_initializer=kernel_init, bias_initializer=bias_init,
                           devices=both, name=name)(x)
    if config.dropout:
      x = keras.layers.Dropout(config.dropout, name=f"dropout{name[2:]}")(x)
  # fc8: the 1000-way classifier; its softmax is in the loss (or the optional last layer).
  kernel_init, bias_init = _initializers(config, "fc8")
  outputs = layers.PlacedDense(config.num_classes, kernel_initializer=kernel_init,
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


def _conv1_padding(config: ModelConfig):
  """(top, bottom, left, right) zeros around the input of conv1."""
  if config.conv1_padding is not None:
    return tuple(config.conv1_padding)
  return (0, 3, 0, 3) if config.variant == "paper" else (2, 2, 2, 2)


def _pool5_size(size, padding, config: ModelConfig) -> int:
  """The side of pool5's grid for an input side `size` padded by `padding` zeros in all (6 is
  what fc6 is sized for)."""
  window = 3 if config.pooling == "overlapping" else 2
  size = (size + padding - 11) // 4 + 1                          # conv1; conv2-5 keep sizes
  for _ in range(3):
    size = layers.pooled_size(size, window, 2, config.ceil_pooling)
  return size


def _initializers(config: ModelConfig, name: str):
  if config.init == "he":
    return keras.initializers.HeNormal(), keras.initializers.Zeros()
  bias = 1.0 if name.split("_")[0] in BIAS_ONE_LAYERS else 0.0
  return (keras.initializers.RandomNormal(stddev=INIT_STDDEV),
          keras.initializers.Constant(bias))
