"""AlexNet in the style of keras.applications: `AlexNet(...)`, `preprocess_input`,
`decode_predictions`.

    from keras_alexnet import applications
    model = applications.AlexNet(weights="/runs/bvlc_alexnet", flavour="caffe")
    x = applications.preprocess_input(images_0_255_rgb, flavour="caffe")   # [N, 227, 227, 3]
    print(applications.decode_predictions(model.predict(x), top=5))

Flavours (keras_alexnet.convert's, plus the paper's):
- "paper": the paper's two-tower net on 224 crops (keras_alexnet.model's defaults).
- "caffe": BVLC's bvlc_alexnet (227 unpadded, LRN k=1 over all maps, ceil pooling, BGR).
- "torchvision": torchvision's one-tower alexnet (conv1 padding 2, no LRN, mean/std input).

`weights` is None (random initialization) or a workdir or checkpoint: one that
`python -m keras_alexnet.convert` wrote from published weights, or a training run's. No weights
are downloaded: there is no hub to fetch them from here (README "Pretrained weights").

The argument checks and their messages follow keras.applications.vgg16 (its
imagenet_utils.obtain_input_shape and validate_activation), with a workdir where Keras has
"imagenet".
"""

import dataclasses
import os

import keras
import numpy as np

from keras_alexnet import dataset_info
from keras_alexnet import model as model_lib

FLAVOURS = ("paper", "caffe", "torchvision")
# What preprocess_input subtracts, RGB 0..255 (the rest of each source's preprocessing, BGR
# order and std scaling, is inside the model, as in the exported SavedModel).
MEANS_RGB = {
    "paper": dataset_info.IMAGENET_MEAN_RGB,
    # Caffe's examples/00-classification: B 104.00698793, G 116.66876762, R 122.67891434.
    "caffe": (122.67891434, 116.66876762, 104.00698793),
    "torchvision": tuple(255.0 * m for m in (0.485, 0.456, 0.406)),
}


def _flavour_config(flavour: str) -> model_lib.ModelConfig:
  if flavour == "paper":
    return model_lib.ModelConfig()
  from keras_alexnet import convert  # pylint: disable=g-import-not-at-top  (no torch import)
  return convert.flavour_config(flavour)


def _check_flavour(flavour):
  if flavour not in FLAVOURS:
    raise ValueError(f"`flavour` must be one of {FLAVOURS}; Received: flavour={flavour!r}")


def _min_size(config: model_lib.ModelConfig) -> int:
  """The smallest input side whose pool5 grid is at least 1x1."""
  top, bottom, _, _ = model_lib._conv1_padding(config)  # pylint: disable=protected-access
  size = 11
  while model_lib._pool5_size(size, top + bottom, config) < 1:  # pylint: disable=protected-access
    size += 1
  return size


def _weights_source(weights):
  """(model with the weights, its ModelConfig, its flavour) of a workdir or checkpoint."""
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  source, metadata = workdir_lib.load_model(weights)
  if metadata.get("tiny_model"):
    raise ValueError(f"weights={weights} holds the test-only tiny model, not an AlexNet.")
  flavour = metadata.get("converted_from", {}).get("flavour", "paper")
  return source, workdir_lib.model_config_from_json(metadata["model_config"]), flavour


def AlexNet(include_top=True, weights=None, input_tensor=None, input_shape=None,  # pylint: disable=invalid-name
            pooling=None, classes=1000, classifier_activation="softmax", flavour="paper"):
  """Instantiates AlexNet (channels_last).

  Args:
    include_top: whether to include fc6, fc7 and fc8.
    weights: None (random initialization) or the path of a workdir/checkpoint (a conversion by
      keras_alexnet.convert or a training run) whose weights are loaded. Its flavour must be
      `flavour`.
    input_tensor: optional Keras tensor to use as image input.
    input_shape: optional (H, W, 3), only with include_top=False (the top needs the flavour's
      own size: 224, or 227 for "caffe"); H and W at least the size that leaves pool5 a 1x1
      grid. None sides are allowed without the top.
    pooling: without the top: None (pool5's 4-D maps), "avg" or "max" (global pooling to
      [N, 256]).
    classes: the number of classes of the top, 1000 with pretrained weights.
    classifier_activation: a str or callable applied to fc8's output; None gives logits. Only
      None and "softmax" with pretrained weights.
    flavour: "paper", "caffe" or "torchvision" (the module docstring).

  Returns:
    a keras.Model from preprocess_input(images, flavour) to probabilities (or features).
  """
  _check_flavour(flavour)
  if not (weights is None or (isinstance(weights, (str, os.PathLike)) and os.path.exists(weights))):
    raise ValueError(
        "The `weights` argument should be either `None` (random initialization) or the path "
        "to a workdir or checkpoint to be loaded (made by `python -m keras_alexnet.convert` "
        f"from published weights, or by training).  Received: weights={weights}")
  source = None
  if weights is not None:
    source, source_config, weights_flavour = _weights_source(weights)
    if weights_flavour != flavour:
      raise ValueError(f"weights={weights} are the {weights_flavour!r} flavour's; pass "
                       f"flavour={weights_flavour!r}.  Received: flavour={flavour!r}")
    source_classes = int(source.output_shape[-1])
    if include_top and classes != source_classes:
      raise ValueError(f"If using `weights` with `include_top=True`, `classes` should be "
                       f"{source_classes}.  Received classes={classes}")
  if pooling not in (None, "avg", "max"):
    raise ValueError(f"`pooling` must be None, 'avg' or 'max'; Received: pooling={pooling!r}")

  # The architecture of the weights (e.g. an ONNX file's 224 input), or the flavour's.
  config = source_config if source is not None else _flavour_config(flavour)
  default_shape = tuple(config.input_shape)
  if input_tensor is not None and input_shape is None:
    input_shape = tuple(input_tensor.shape[1:])
  input_shape = _input_shape(input_shape, default_shape, _min_size(config), include_top)

  if include_top:
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
      raise ValueError(f"`classes` must be an integer >= 2; Received: classes={classes!r}")
    if weights is not None:
      activation = keras.activations.get(classifier_activation)
      if activation not in (keras.activations.get("softmax"), keras.activations.get(None)):
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the "
            "`classifier_activation` argument when using pretrained weights, with "
            f"`include_top=True`; Received: classifier_activation={classifier_activation}")
    net = model_lib.alexnet(dataclasses.replace(config, num_classes=classes,
                                                softmax=classifier_activation == "softmax"))
  else:
    net = model_lib.alexnet(dataclasses.replace(config, input_shape=input_shape),
                            include_top=False)
  if source is not None:
    for layer in net.layers:
      if layer.weights:
        layer.set_weights(source.get_layer(layer.name).get_weights())

  inputs = keras.Input(input_shape, name="images") if input_tensor is None else input_tensor
  if input_tensor is not None and not _is_keras_tensor(input_tensor):
    inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="images")
  x = net(inputs)
  if include_top and classifier_activation not in ("softmax", None):
    x = keras.layers.Activation(classifier_activation, name="predictions")(x)
  if not include_top and pooling == "avg":
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  elif not include_top and pooling == "max":
    x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
  return keras.Model(inputs, x, name=f"alexnet_{flavour}")


def _is_keras_tensor(tensor) -> bool:
  return isinstance(tensor, keras.KerasTensor)


def _input_shape(input_shape, default_shape, min_size, include_top):
  """keras.applications' obtain_input_shape, for channels_last."""
  if include_top:
    if input_shape is not None and tuple(input_shape) != default_shape:
      raise ValueError(f"When setting `include_top=True`, `input_shape` should be "
                       f"{default_shape}.  Received: input_shape={input_shape}")
    return default_shape
  if input_shape is None:
    return (None, None, 3)
  input_shape = tuple(input_shape)
  if len(input_shape) != 3:
    raise ValueError("`input_shape` must be a tuple of three integers.")
  if input_shape[-1] != 3:
    raise ValueError(f"The input must have 3 channels; Received `input_shape={input_shape}`")
  if any(n is not None and n < min_size for n in input_shape[:2]):
    raise ValueError(f"Input size must be at least {min_size}x{min_size}; Received: "
                     f"input_shape={input_shape}")
  return input_shape


def preprocess_input(x, flavour="paper"):
  """RGB images on the 0..255 scale ([..., 3], channels_last) -> the model's input: minus the
  flavour's mean (MEANS_RGB). Caffe's BGR order and torchvision's division by std happen
  inside the model, so this is all that is left. No resizing or cropping: give 224x224
  (227x227 for "caffe") crops, e.g. the centre of the image's 256x256 resize.

  A numpy array gives a float32 array; a tensor a tensor."""
  _check_flavour(flavour)
  mean = np.array(MEANS_RGB[flavour], np.float32)
  if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
    x = np.asarray(x, np.float32)
    if x.shape[-1:] != (3,):
      raise ValueError(f"preprocess_input expects RGB images [..., 3]; Received shape {x.shape}")
    return x - mean
  x = keras.ops.cast(x, "float32")
  if tuple(x.shape[-1:]) != (3,):
    raise ValueError(f"preprocess_input expects RGB images [..., 3]; Received shape {x.shape}")
  return x - mean


def decode_predictions(preds, top=5):
  """[[(wnid, name, score), ...top], ...] per sample of [samples, 1000] predictions, with the
  packaged ILSVRC-2012 WordNet names (keras_alexnet/data/ilsvrc2012_classes.txt; the name is
  the first lemma, as Keras' imagenet_class_index has it)."""
  from keras_alexnet import data  # pylint: disable=g-import-not-at-top
  preds = np.asarray(preds)
  if preds.ndim != 2 or preds.shape[1] != data.NUM_CLASSES:
    raise ValueError("`decode_predictions` expects a batch of predictions (i.e. a 2D array of "
                     f"shape (samples, {data.NUM_CLASSES})). Received array with shape: "
                     f"{preds.shape}")
  if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= data.NUM_CLASSES:
    raise ValueError(f"`top` must be an integer in 1..{data.NUM_CLASSES}; Received: top={top!r}")
  classes = data.ilsvrc2012_classes()
  results = []
  for row in preds:
    best = np.argsort(-row, kind="stable")[:top]
    results.append([(classes[i][0], classes[i][1].split(",")[0].strip(), float(row[i]))
                    for i in best])
  return results
