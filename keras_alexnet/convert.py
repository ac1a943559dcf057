"""Converts published ImageNet AlexNet weights into an ordinary workdir.

    python -m keras_alexnet.convert --input=FILE --workdir=DIR
        [--format=auto|caffe|npy|torchvision|onnx] [--mean_file=ilsvrc_2012_mean.npy] [--overwrite]

Sources (README "Pretrained weights" says where each is published; nothing is downloaded here):

- caffe: BVLC's bvlc_alexnet.caffemodel, a protobuf NetParameter. Read with the protobuf runtime
  and the few messages of caffe.proto built here (`_caffe_messages`), in both of Caffe's layouts
  (V1 `layers` = 2 and the new `layer` = 100).
- npy: caffe-tensorflow's bvlc_alexnet.npy, a pickled dict, read by an unpickler that admits
  only numpy arrays and dtypes (dicts, lists and strings are pickle's own opcodes).
- torchvision: the state_dict alexnet-owt-*.pth, by torch.load(weights_only=True).
- onnx: an ONNX graph (the model zoo's bvlcalexnet, or a torch.onnx export of torchvision's
  net), its initializers and node attributes read with the `onnx` package.

Each file becomes one of two flavours, the source's own net and preprocessing as ModelConfig
and Statistics values (FLAVOURS): "caffe" (two towers by groups, 227x227 unpadded, LRN k=1 over
all maps, ceil pooling, BGR 0..255 minus Caffe's mean) or "torchvision" (one tower
64-192-384-256-256, conv1 padding 2, RGB/255 minus mean over std). The workdir holds
config.json, statistics.npz and checkpoints/step-00000000, so `evaluate`, `export` and `train
--init_checkpoint` take it as they take a training run.

Nothing of the user's file is executed, and nothing is written under DIR's name until the whole
workdir is complete (it is built in a temporary folder beside DIR and renamed). torch and onnx
are optional (pip install 'keras_alexnet[convert]') and imported only here, only for their
formats.
"""

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
from typing import Dict, Optional, Tuple

import numpy as np

from keras_alexnet import errors
from keras_alexnet import files

FORMATS = ("caffe", "npy", "torchvision", "onnx")
# BVLC model zoo, models/bvlc_alexnet/readme.md: "sha1: 9116a64c0fbe4459d18f4bb6b56d647b63920377".
BVLC_ALEXNET_SHA1 = "9116a64c0fbe4459d18f4bb6b56d647b63920377"
# torchvision names its file by the start of its SHA-256 (torch.hub's check_hash convention).
TORCHVISION_SHA256_PREFIX = "7be5be79"
# Caffe's examples/00-classification.ipynb prints the per-channel mean of ilsvrc_2012_mean.npy
# as "mean-subtracted values: [('B', 104.0069879317889), ('G', 116.66876761696767),
# ('R', 122.6789143406786)]".
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# torchvision's ImageNet normalization (transforms.Normalize in its reference scripts).
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# The canonical (torch/Caffe) layout every reader produces: conv (out, in/groups, kh, kw), fc
# (out, in) with fc6's inputs in pool5's (C, H, W) order.
SHAPES = {
    "caffe": {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216),
              "fc7": (4096, 4096), "fc8": (1000, 4096)},
    "torchvision": {"conv1": (64, 3, 11, 11), "conv2": (192, 64, 5, 5),
                    "conv3": (384, 192, 3, 3), "conv4": (256, 384, 3, 3),
                    "conv5": (256, 256, 3, 3), "fc6": (4096, 9216), "fc7": (4096, 4096),
                    "fc8": (1000, 4096)},
}
# torchvision.models.alexnet's state_dict keys of each layer.
TORCHVISION_KEYS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
                    "conv4": "features.8", "conv5": "features.10", "fc6": "classifier.1",
                    "fc7": "classifier.4", "fc8": "classifier.6"}


class ConversionError(ValueError):
  """The file cannot become one of the flavours; the message says what was found."""


def flavour_config(flavour: str, input_size: Optional[int] = None):
  """The ModelConfig of a flavour (the source's own architecture)."""
  from keras_alexnet import model as model_lib  # pylint: disable=g-import-not-at-top
  if flavour == "caffe":
    size = input_size or 227
    # Caffe's LRN: x / (k + alpha/n sum x^2)^beta with alpha 1e-4, n = local_size 5, k 1,
    # across channels of the whole blob (groups play no part in it).
    return model_lib.ModelConfig(
        variant="paper", input_shape=(size, size, 3), conv1_padding=(0, 0, 0, 0),
        lrn_bias=1.0, lrn_alpha=1e-4 / 5, lrn_towers=1, ceil_pooling=True, bgr=True)
  if flavour == "torchvision":
    # (x / 255 - mean) / std = (x - 255 mean) / (255 std): the export subtracts 255 mean,
    # the model scales by 1 / (255 std).
    return model_lib.ModelConfig(
        variant="one_tower", input_scale=tuple(1.0 / (255.0 * s) for s in TORCH_STD_RGB))
  raise errors.invalid("flavour", flavour, "'caffe' or 'torchvision'")


def flavour_statistics(flavour: str, mean_image: Optional[np.ndarray] = None, source=""):
  """The mean the export subtracts (RGB, 0..255); the PCA is the published one (only
  fine-tuning's lighting augmentation uses it)."""
  from keras_alexnet import dataset_info  # pylint: disable=g-import-not-at-top
  published = dataset_info.imagenet_statistics()
  if flavour == "caffe":
    mean_rgb = np.array(CAFFE_MEAN_BGR[::-1], np.float32)
    what = "Caffe's ilsvrc_2012_mean per channel (BGR 104.007, 116.669, 122.679)"
  else:
    mean_rgb = np.array([255.0 * m for m in TORCH_MEAN_RGB], np.float32)
    what = "torchvision's mean 255 x (0.485, 0.456, 0.406)"
  if mean_image is not None:
    mean_rgb = mean_image.reshape(-1, 3).mean(axis=0).astype(np.float32)
    what = f"the mean image {source}"
  return dataset_info.Statistics(
      mean_image=mean_image, mean_rgb=mean_rgb, eigenvalues=published.eigenvalues,
      eigenvectors=published.eigenvectors, source=f"{what}; PCA: {published.source}")


# ---------------------------------------------------------------------------------------------
# Readers: each returns (flavour, {layer: (weights, biases)} in the canonical layout, details).


def detect_format(path: str) -> str:
  """The format of the file at `path`, from its content."""
  with open(path, "rb") as f:
    head = f.read(16)
  if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
    return "torchvision"          # torch.save's zip, or its legacy pickle
  if head.startswith(b"\x93NUMPY"):
    return "npy"
  if not head:
    raise ConversionError(f"{path} is empty.")
  with open(path, "rb") as f:
    data = f.read()
  if _parses_as_onnx(data):
    return "onnx"
  if _parses_as_caffe(data):
    return "caffe"
  raise ConversionError(
      f"{path} is none of the known formats (or a truncated file): a Caffe .caffemodel (protobuf NetParameter), "
      "caffe-tensorflow's .npy, a torchvision .pth state_dict or an ONNX model. Its first "
      f"bytes are {head!r}. Pass --format to force one and see why it does not load.")


def _parses_as_onnx(data: bytes) -> bool:
  # ONNX ModelProto starts with ir_version (field 1, varint: tag 0x08); a NetParameter with
  # its name (field 1, string: 0x0a) or layers/layer.
  if not data.startswith(b"\x08"):
    return False
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    return True   # read_onnx says what to install
  try:
    model = onnx.ModelProto.FromString(data)
  except Exception:  # pylint: disable=broad-except
    return False
  return len(model.graph.node) > 0


def _parses_as_caffe(data: bytes) -> bool:
  try:
    net = _caffe_messages()["NetParameter"].FromString(data)
  except Exception:  # pylint: disable=broad-except
    return False
  return bool(len(net.layer) or len(net.layers))


def _check_shapes(flavour: str, found: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str,
                  names: Optional[Dict[str, str]] = None):
  """Every layer present with the flavour's shapes, or ConversionError naming the first tensor
  that does not fit, its shape and the expected one."""
  names = names or {}
  for layer in LAYERS:
    expected = SHAPES[flavour][layer]
    label = names.get(layer, layer)
    if layer not in found:
      raise ConversionError(f"{path}: has no {label} (expected weights {expected} for "
                            f"{flavour}'s AlexNet {layer}); found {sorted(found) or 'nothing'}.")
    weights, biases = found[layer]
    for what, array, want in (("weights", weights, expected), ("biases", biases,
                                                                 (expected[0],))):
      if tuple(array.shape) != want:
        raise ConversionError(
            f"{path}: {label} {what} have shape {tuple(array.shape)}; {flavour}'s AlexNet "
            f"{layer} expects {want}. Not the weights of this AlexNet (another network, or "
            "another number of classes?).")
      if not np.all(np.isfinite(array)):
        raise ConversionError(f"{path}: {label} {what} hold non-finite values.")


def read_torchvision(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError("Reading a .pth needs torch: pip install 'keras_alexnet[convert]'."
                          ) from e
  try:
    # weights_only: torch's own restricted unpickler (tensors, dicts, lists, numbers only).
    state = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ConversionError(f"{path}: refused by torch.load(weights_only=True), which loads "
                          f"tensors and containers only, never code: {str(e)[:400]}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{path}: not a readable torch file (truncated?): "
                          f"{type(e).__name__}: {str(e)[:300]}") from e
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
    raise ConversionError(f"{path}: expected a state_dict (tensor names -> tensors); found a "
                          f"{type(state).__name__}.")
  state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
  tensors = {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}
  wanted = {f"{TORCHVISION_KEYS[l]}.{p}" for l in LAYERS for p in ("weight", "bias")}
  found, names = {}, {}
  for layer in LAYERS:
    key = TORCHVISION_KEYS[layer]
    names[layer] = key
    if f"{key}.weight" not in tensors or f"{key}.bias" not in tensors:
      stray = [k for k in tensors if k not in wanted]
      first = (f"; its first tensor that is not torchvision AlexNet's is {stray[0]} with shape "
               f"{tuple(tensors[stray[0]].shape)}" if stray else "")
      raise ConversionError(
          f"{path}: has no {key}.weight/.bias (torchvision AlexNet's {layer}, weights "
          f"{SHAPES['torchvision'][layer]}){first}. Not torchvision's AlexNet.")
    found[layer] = (tensors[f"{key}.weight"], tensors[f"{key}.bias"])
  extra = [k for k in tensors if k not in wanted]
  if extra:
    raise ConversionError(f"{path}: holds tensors torchvision's AlexNet does not have, first "
                          f"{extra[0]} {tuple(tensors[extra[0]].shape)}.")
  _check_shapes("torchvision", found, path, names)
  return "torchvision", found, {}


class _Refused(pickle.UnpicklingError):
  """A global the restricted unpickler does not admit."""


class _ArraysOnly(pickle.Unpickler):
  """Admits numpy arrays and dtypes only: find_class is the one way a pickle reaches code, so
  any other global (os.system, builtins.eval, a class with __reduce__) is refused unloaded."""

  def find_class(self, module, name):
    if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
      return getattr(np, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
      return _reconstruct_ndarray
    raise _Refused(
        f"the pickle asks for {module}.{name}; only numpy arrays, dtypes, dicts, lists and "
        "strings are admitted (a weights file needs nothing else), so it was not loaded")


def _reconstruct_ndarray(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise _Refused(f"an array of type {subtype!r}; only numpy.ndarray admitted")
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _load_restricted_npy(path: str):
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(f)
      else:
        header = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
      raise ConversionError(f"{path}: not a readable .npy file: {e}") from e
    shape, _, dtype = header
    if dtype.hasobject:
      try:
        # latin1: caffe-tensorflow wrote its files from Python 2 (str array buffers).
        obj = _ArraysOnly(f, encoding="latin1").load()
      except _Refused as e:
        raise ConversionError(f"{path}: refused: {e}.") from e
      except Exception as e:  # pylint: disable=broad-except
        raise ConversionError(f"{path}: the pickle inside does not load (truncated?): "
                              f"{type(e).__name__}: {str(e)[:300]}") from e
      if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
      return obj
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{path}: not a readable .npy array (truncated?): {e}") from e


def read_npy(path: str):
  """caffe-tensorflow: {layer: [weights, biases]} or {layer: {'weights', 'biases'}}, convs
  (kh, kw, in/groups, out), fc (in, out) with fc6's rows in (H, W, C) order."""
  obj = _load_restricted_npy(path)
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: expected caffe-tensorflow's dict of layers; found "
                          f"{type(obj).__name__}.")
  found = {}
  for layer in LAYERS:
    if layer not in obj:
      stray = [k for k in obj if k not in LAYERS]
      raise ConversionError(f"{path}: has no layer {layer!r} (expected weights "
                            f"{SHAPES['caffe'][layer]}); found "
                            f"{sorted(map(str, obj))[:10]}{' ...' if len(obj) > 10 else ''}"
                            + (f", first not of AlexNet: {stray[0]!r}" if stray else "") + ".")
    value = obj[layer]
    if isinstance(value, dict) and {"weights", "biases"} <= set(value):
      weights, biases = value["weights"], value["biases"]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
      weights, biases = value
    else:
      raise ConversionError(f"{path}: {layer} must be [weights, biases] or {{'weights', "
                            f"'biases'}}; found {type(value).__name__}.")
    if not isinstance(weights, np.ndarray) or not isinstance(biases, np.ndarray):
      raise ConversionError(f"{path}: {layer}'s weights and biases must be arrays.")
    weights = weights.astype(np.float32)
    if layer.startswith("conv") and weights.ndim == 4:
      weights = weights.transpose(3, 2, 0, 1)                  # -> (out, in/g, kh, kw)
    elif layer == "fc6" and weights.shape == (9216, 4096):
      weights = weights.reshape(6, 6, 256, 4096).transpose(3, 2, 0, 1).reshape(4096, 9216)
    elif weights.ndim == 2:
      weights = weights.T
    found[layer] = (weights, biases.astype(np.float32))
  _check_shapes("caffe", found, path)
  return "caffe", found, {}


_CAFFE_MESSAGES = {}


def _caffe_messages():
  """BlobShape, BlobProto, V1LayerParameter, LayerParameter, NetParameter: the fields of
  caffe.proto (BVLC/caffe src/caffe/proto/caffe.proto) that hold the weights, with their
  numbers; everything else in a .caffemodel is skipped as unknown fields."""
  if _CAFFE_MESSAGES:
    return _CAFFE_MESSAGES
  from google.protobuf import descriptor_pb2, descriptor_pool  # pylint: disable=g-import-not-at-top
  from google.protobuf import message_factory  # pylint: disable=g-import-not-at-top
  F = descriptor_pb2.FieldDescriptorProto
  file = descriptor_pb2.FileDescriptorProto(name="keras_alexnet_caffe_min.proto",
                                            package="keras_alexnet_caffe", syntax="proto2")

  def message(name, *fields):
    m = file.message_type.add(name=name)
    for field_name, number, kind, label, type_name, packed in fields:
      f = m.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        f.type_name = f".keras_alexnet_caffe.{type_name}"
      if packed:
        f.options.packed = True

  opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
  message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None, True))
  message("BlobProto", ("num", 1, F.TYPE_INT32, opt, None, False),
          ("channels", 2, F.TYPE_INT32, opt, None, False),
          ("height", 3, F.TYPE_INT32, opt, None, False),
          ("width", 4, F.TYPE_INT32, opt, None, False),
          ("data", 5, F.TYPE_FLOAT, rep, None, True),
          ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False))
  # V1's type is an enum in caffe.proto (CONVOLUTION = 4, INNER_PRODUCT = 14); an int32 is the
  # same varint on the wire.
  message("V1LayerParameter", ("name", 4, F.TYPE_STRING, opt, None, False),
          ("type", 5, F.TYPE_INT32, opt, None, False),
          ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False))
  message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
          ("type", 2, F.TYPE_STRING, opt, None, False),
          ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False))
  message("NetParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
          ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False),
          ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  for name in ("BlobShape", "BlobProto", "V1LayerParameter", "LayerParameter", "NetParameter"):
    _CAFFE_MESSAGES[name] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"keras_alexnet_caffe.{name}"))
  return _CAFFE_MESSAGES


V1_CONVOLUTION, V1_INNER_PRODUCT = 4, 14


def _blob_array(blob, rank: int) -> np.ndarray:
  """A BlobProto's data in its shape; legacy 4-D (num, channels, height, width) blobs lose
  their leading 1s down to `rank` (Caffe's old fc blobs are (1, 1, out, in))."""
  if len(blob.shape.dim):
    shape = tuple(int(d) for d in blob.shape.dim)
  else:
    shape = (blob.num, blob.channels, blob.height, blob.width)
    while len(shape) > rank and shape[0] == 1:
      shape = shape[1:]
  data = np.asarray(blob.data, np.float32)
  if data.size != int(np.prod(shape)):
    raise ConversionError(f"a blob of shape {shape} holds {data.size} values")
  return data.reshape(shape)


def read_caffe(path: str):
  with open(path, "rb") as f:
    data = f.read()
  try:
    net = _caffe_messages()["NetParameter"].FromString(data)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{path}: not a Caffe NetParameter protobuf (truncated?): "
                          f"{str(e)[:300]}") from e
  layers = [(l.name, l.type, l.blobs) for l in net.layer]
  layers += [(l.name, {V1_CONVOLUTION: "Convolution", V1_INNER_PRODUCT: "InnerProduct"}.get(
      l.type, f"V1 type {l.type}"), l.blobs) for l in net.layers]
  with_blobs = [(n, t, b) for n, t, b in layers if len(b)]
  if not with_blobs:
    raise ConversionError(f"{path}: a NetParameter without weights (a .prototxt-like net "
                          "definition, or a truncated file).")
  found = {}
  for name, kind, blobs in with_blobs:
    if name not in LAYERS:
      shape = tuple(_blob_shape(blobs[0]))
      raise ConversionError(f"{path}: layer {name!r} ({kind}, first blob {shape}) is not one "
                            f"of bvlc_alexnet's {', '.join(LAYERS)}. Not Caffe's AlexNet.")
    want = "Convolution" if name.startswith("conv") else "InnerProduct"
    if kind != want or len(blobs) != 2:
      raise ConversionError(f"{path}: {name} is a {kind} with {len(blobs)} blobs; "
                            f"bvlc_alexnet's is a {want} with weights and biases.")
    try:
      rank = 4 if want == "Convolution" else 2
      found[name] = (_blob_array(blobs[0], rank), _blob_array(blobs[1], 1))
    except ConversionError as e:
      raise ConversionError(f"{path}: {name}: {e}") from e
  _check_shapes("caffe", found, path)
  return "caffe", found, {}


def _blob_shape(blob):
  if len(blob.shape.dim):
    return [int(d) for d in blob.shape.dim]
  return [blob.num, blob.channels, blob.height, blob.width]


# ONNX ops that carry no weights and do not change values (in inference) or only reshape
# pool5 into fc6's (C, H, W) vector; anything else that is not in a flavour's sequence is
# refused.
_ONNX_PASSIVE = {"Dropout", "Flatten", "Reshape", "Identity", "Constant", "Shape", "Gather",
                 "Unsqueeze", "Concat", "Squeeze", "Cast", "Softmax"}
_ONNX_SEQUENCES = {
    "caffe": "Conv Relu LRN MaxPool Conv Relu LRN MaxPool Conv Relu Conv Relu Conv Relu MaxPool "
             "Gemm Relu Gemm Relu Gemm",
    "torchvision": "Conv Relu MaxPool Conv Relu MaxPool Conv Relu Conv Relu Conv Relu MaxPool "
                   "Gemm Relu Gemm Relu Gemm",
}


def read_onnx(path: str):
  """The model zoo's bvlcalexnet (Caffe's net) or an export of torchvision's: the op sequence,
  each attribute and each initializer checked against the flavour it must be."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError("Reading ONNX needs onnx: pip install 'keras_alexnet[convert]'.") from e
  try:
    model = onnx.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{path}: not a readable ONNX model (truncated?): {str(e)[:300]}"
                          ) from e
  graph = model.graph
  init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  for node in graph.node:   # Constant nodes are weights too in some exports
    if node.op_type == "Constant" and node.attribute:
      init[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
  inputs = [i for i in graph.input if i.name not in init]
  if len(inputs) != 1:
    raise ConversionError(f"{path}: expected one image input; found {[i.name for i in inputs]}.")
  dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
  if len(dims) != 4 or dims[1] not in (3, None) or dims[2] != dims[3]:
    raise ConversionError(f"{path}: the input must be NCHW [N, 3, S, S]; found {dims}.")

  def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

  ops, convs, gemms, lrns, pools = [], [], [], [], []
  lrn_block = None   # inside torch.onnx.export's decomposition of LocalResponseNorm
  for node in graph.node:
    kind, a = node.op_type, attrs(node)
    if lrn_block is not None:
      if kind == "Div" and node.input[0] == lrn_block["x"]:
        if set(lrn_block["attrs"]) != {"size", "alpha", "bias", "beta"}:
          raise ConversionError(f"{path}: node {node.name!r} ends a decomposed LRN whose "
                                f"constants were not all found: {lrn_block['attrs']}.")
        ops.append("LRN")
        lrns.append((node, lrn_block["attrs"]))
        lrn_block = None
      else:
        _torch_lrn_part(lrn_block, node, kind, a, init, path)
      continue
    if kind == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
      # torch's F.local_response_norm: x / (k + alpha * avg_pool(x^2, size))^beta, exported as
      # Mul(x, x), padding and an AveragePool over channels, Mul alpha, Add k, Pow beta, Div.
      lrn_block = {"x": node.input[0], "attrs": {}}
      continue
    if kind in _ONNX_PASSIVE:
      continue
    if kind in ("AveragePool", "GlobalAveragePool"):
      # torchvision's AdaptiveAvgPool2d((6, 6)) on pool5's 6x6 grid: the identity.
      if kind == "AveragePool" and list(a.get("kernel_shape", [])) == [1, 1] and list(
          a.get("strides", [1, 1])) == [1, 1] and not any(a.get("pads", [])):
        continue
      raise ConversionError(f"{path}: node {node.name!r} {kind} {a} is not the identity "
                            "average pooling of torchvision's 6x6 grid; cannot map it.")
    if kind == "MatMul":
      # MatMul (+ Add of a bias) is a fully-connected layer too; its B is (in, out).
      kind, a = "Gemm", {"_matmul": node}
    elif kind == "Add" and ops and ops[-1] == "Gemm" and "_matmul" in gemms[-1][1] and (
        "_bias" not in gemms[-1][1]):
      gemms[-1][1]["_bias"] = node
      continue
    ops.append(kind)
    if kind == "Conv":
      convs.append((node, a))
    elif kind == "Gemm":
      gemms.append((node, a))
    elif kind == "LRN":
      lrns.append((node, a))
    elif kind == "MaxPool":
      pools.append((node, a))
  if lrn_block is not None:
    raise ConversionError(f"{path}: a Mul(x, x) that does not end in an LRN's Div(x, ...).")
  sequence = " ".join(ops)
  flavour = next((f for f, s in _ONNX_SEQUENCES.items() if s == sequence), None)
  if flavour is None:
    raise ConversionError(
        f"{path}: its layers are {sequence or 'none'}; an AlexNet this converter maps is "
        + " or ".join(f"{f}: {s}" for f, s in _ONNX_SEQUENCES.items()) + ".")

  def weight(node, index):
    if len(node.input) <= index or node.input[index] not in init:
      raise ConversionError(f"{path}: node {node.name!r} ({node.op_type}) input {index} is not "
                            "an initializer; only constant weights can be converted.")
    return init[node.input[index]].astype(np.float32)

  found, names = {}, {}
  groups = {"caffe": (1, 2, 1, 2, 2), "torchvision": (1, 1, 1, 1, 1)}[flavour]
  for i, (node, a) in enumerate(convs):
    layer = LAYERS[i]
    names[layer] = f"node {node.name!r} ({node.input[1]})"
    w = weight(node, 1)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    strides = list(a.get("strides", [1, 1]))
    k = w.shape[-1]
    want_pads = ([0, 0, 0, 0] if flavour == "caffe" else [2, 2, 2, 2]) if i == 0 else [k // 2] * 4
    problems = []
    if a.get("group", 1) != groups[i]:
      problems.append(f"group {a.get('group', 1)} (expected {groups[i]})")
    if strides != ([4, 4] if i == 0 else [1, 1]):
      problems.append(f"strides {strides}")
    if pads != want_pads:
      problems.append(f"pads {pads} (expected {want_pads})")
    if any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("auto_pad", b"NOTSET") not in (
        b"NOTSET", "NOTSET"):
      problems.append(f"dilations/auto_pad {a.get('dilations')}/{a.get('auto_pad')}")
    if problems:
      raise ConversionError(f"{path}: {names[layer]} ({flavour} {layer}) has "
                            + ", ".join(problems) + ".")
    b = weight(node, 2) if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
    found[layer] = (w, b)
  for i, (node, a) in enumerate(gemms):
    layer = LAYERS[5 + i]
    names[layer] = f"node {node.name!r} ({node.input[1]})"
    if "_matmul" in a:
      w = weight(node, 1).T
      add = a.get("_bias")
      bias = next((init[i] for i in add.input if i in init), None) if add is not None else None
      found[layer] = (w, np.zeros(w.shape[0], np.float32) if bias is None
                      else bias.astype(np.float32).reshape(-1))
      continue
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
      raise ConversionError(f"{path}: {names[layer]} Gemm {a} is not a plain fully-connected "
                            "layer (transA 0, alpha 1, beta 1).")
    w = weight(node, 1)
    if not a.get("transB", 0):
      w = w.T
    found[layer] = (w, weight(node, 2) if len(node.input) > 2 else np.zeros(w.shape[0],
                                                                              np.float32))
  for node, a in lrns:
    if (a.get("size"), a.get("beta", 0.75), a.get("bias", 1.0)) != (5, 0.75, 1.0) or not (
        np.isclose(a.get("alpha", 1e-4), 1e-4, rtol=1e-6)):
      raise ConversionError(f"{path}: node {node.name!r} LRN {a}; Caffe's AlexNet has size 5, "
                            "alpha 1e-4, beta 0.75, bias 1.")
  for node, a in pools:
    if (list(a.get("kernel_shape", [])) != [3, 3] or list(a.get("strides", [1, 1])) != [2, 2]
        or any(a.get("pads", [0] * 4)[:2])):
      raise ConversionError(f"{path}: node {node.name!r} MaxPool {a}; AlexNet pools 3x3 with "
                            "stride 2 and no padding before the first row and column.")
  size = dims[2] or (227 if flavour == "caffe" else 224)
  details = {"input_size": size, "ceil": _onnx_pools_match(flavour, size, convs, pools, path)}
  _check_shapes(flavour, found, path, names)
  return flavour, found, details


# The ops of torch's LocalResponseNorm export between Mul(x, x) and Div(x, ...).
_TORCH_LRN_OPS = {"Constant", "Reshape", "ConstantOfShape", "Concat", "Slice", "Transpose", "Cast",
                  "Pad", "AveragePool", "Shape", "Gather", "Equal", "If", "Mul", "Add", "Pow",
                  "Unsqueeze", "Squeeze"}


def _torch_lrn_part(block, node, kind, a, init, path):
  """Reads size (the AveragePool's channel window; count_include_pad, so it divides by size as
  Caffe does), alpha (Mul), k (Add) and beta (Pow) from torch's decomposed LRN."""
  if kind not in _TORCH_LRN_OPS:
    raise ConversionError(f"{path}: node {node.name!r} ({kind}) inside what looked like torch's "
                          "LocalResponseNorm; cannot map it.")
  constant = [init[i] for i in node.input if i in init and init[i].size == 1]
  if kind == "AveragePool":
    block["attrs"]["size"] = int(a["kernel_shape"][0])
    if not a.get("count_include_pad", 0):
      raise ConversionError(f"{path}: node {node.name!r}: LRN's average must count the padding.")
  elif constant and kind in ("Mul", "Add", "Pow"):
    block["attrs"][{"Mul": "alpha", "Add": "bias", "Pow": "beta"}[kind]] = float(constant[0])


def _onnx_pools_match(flavour, size, convs, pools, path) -> bool:
  """ceil_pooling for the model: ONNX's pooled sizes (ceil_mode or bottom/right pads) must be
  those of floor or of ceil rounding, at this input size."""
  from keras_alexnet import layers  # pylint: disable=g-import-not-at-top
  pads = list(convs[0][1].get("pads", [0] * 4))
  n = (size + pads[0] + pads[2] - 11) // 4 + 1
  theirs, floor, ceil = [], [], []
  f = c = n
  for node, a in pools:
    p = list(a.get("pads", [0] * 4))
    t = n + p[2] - 3
    n = (-(-t // 2) if a.get("ceil_mode", 0) else t // 2) + 1
    f, c = layers.pooled_size(f, 3, 2, False), layers.pooled_size(c, 3, 2, True)
    theirs.append(n)
    floor.append(f)
    ceil.append(c)
  if theirs == ceil and (flavour == "caffe" or theirs != floor):
    return True
  if theirs == floor:
    return False
  raise ConversionError(f"{path}: its pools give grids {theirs} at input {size}; the model's "
                        f"would be {floor} (floor) or {ceil} (ceil).")


READERS = {"caffe": read_caffe, "npy": read_npy, "torchvision": read_torchvision,
           "onnx": read_onnx}


# ---------------------------------------------------------------------------------------------
# Into the Keras model.


def keras_weights(flavour: str, found) -> Dict[str, list]:
  """{Keras layer name: [kernel, bias]} from the canonical layout. conv: (out, in/g, kh, kw)
  -> (kh, kw, in/g, out), a grouped layer's halves into its tower layers _a and _b; fc:
  (out, in) -> (in, out), fc6's rows from pool5's (C, H, W) order into Flatten's (H, W, C)."""
  out = {}
  towers = flavour == "caffe"
  for layer in LAYERS:
    w, b = found[layer]
    if layer.startswith("conv"):
      kernel = w.transpose(2, 3, 1, 0)
      if towers and layer in ("conv2", "conv4", "conv5"):
        half = kernel.shape[-1] // 2
        out[f"{layer}_a"] = [kernel[..., :half], b[:half]]
        out[f"{layer}_b"] = [kernel[..., half:], b[half:]]
      else:
        out[layer] = [kernel, b]
    elif layer == "fc6":
      out[layer] = [w.reshape(w.shape[0], 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, -1), b]
    else:
      out[layer] = [w.T, b]
  return {k: [np.ascontiguousarray(a, np.float32) for a in v] for k, v in out.items()}


def read_mean_file(path: str) -> np.ndarray:
  """Caffe's per-pixel mean, BGR (3, 256, 256) in ilsvrc_2012_mean.npy (a plain array) or
  imagenet_mean.binaryproto (a BlobProto), as RGB [256, 256, 3] float32."""
  from keras_alexnet import decoding  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    head = f.read(6)
  try:
    if head.startswith(b"\x93NUMPY"):
      array = np.load(path, allow_pickle=False)
    else:
      with open(path, "rb") as f:
        blob = _caffe_messages()["BlobProto"].FromString(f.read())
      array = _blob_array(blob, 3)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"--mean_file {path}: neither a .npy array nor a Caffe .binaryproto "
                          f"blob: {str(e)[:300]}") from e
  size = decoding.STORED_SIZE
  if array.shape != (3, size, size) or not np.all(np.isfinite(array)):
    raise ConversionError(f"--mean_file {path}: must be Caffe's BGR mean of shape (3, {size}, "
                          f"{size}); found {array.shape}.")
  return np.ascontiguousarray(array[::-1].transpose(1, 2, 0), np.float32)


@dataclasses.dataclass(frozen=True)
class Converted:
  workdir: str
  flavour: str
  format: str
  sha1: str
  note: str


def convert(input_path: str, workdir: str, format: str = "auto",  # pylint: disable=redefined-builtin
            mean_file: Optional[str] = None, overwrite: bool = False) -> Converted:
  """Reads `input_path`, writes the workdir, returns what it did. ConversionError (a ValueError)
  or FileExistsError / FileNotFoundError before anything is written."""
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f"--input {input_path} is not a file.")
  if format != "auto" and format not in FORMATS:
    raise errors.invalid("--format", format, f"auto or one of {FORMATS}")
  workdir = os.path.abspath(workdir)
  _check_workdir_free(workdir, overwrite)
  fmt = detect_format(input_path) if format == "auto" else format
  flavour, found, details = READERS[fmt](input_path)
  mean_image = read_mean_file(mean_file) if mean_file else None
  if mean_image is not None and flavour != "caffe":
    raise ConversionError(f"--mean_file is Caffe's mean image; {input_path} is {flavour}'s net.")
  sha1 = _sha1(input_path)
  note = _provenance(fmt, flavour, input_path, sha1)

  from keras_alexnet import data as data_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = flavour_config(flavour, details.get("input_size"))
  if "ceil" in details:
    config = dataclasses.replace(config, ceil_pooling=details["ceil"])
  model = workdir_lib.build_model(config)
  for name, arrays in keras_weights(flavour, found).items():
    model.get_layer(name).set_weights(arrays)
  stats = flavour_statistics(flavour, mean_image, mean_file or "")
  metadata = {
      "model_config": workdir_lib.model_config_to_json(config),
      "tiny_model": False,
      "num_classes": 1000,
      "classes": [list(c) for c in data_lib.ilsvrc2012_classes()],
      "data_dir": None,
      "data": {"format": None, "num_examples": {}, "label_offset": 0},
      "statistics": workdir_lib.STATISTICS_FILE,
      "statistics_source": stats.source,
      "augment": {"mean": "per_pixel" if mean_image is not None else "per_channel"},
      "converted_from": {"input": os.path.abspath(input_path), "format": fmt,
                         "flavour": flavour, "sha1": sha1, "note": note},
  }
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-convert-{os.path.basename(workdir)}-", dir=parent)
  try:
    files.write_json(os.path.join(tmp, workdir_lib.CONFIG_FILE), metadata)
    workdir_lib.save_statistics(tmp, stats)
    checkpoint = tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(model))
    # best.json names the one checkpoint, so loaders need not warn about "no validation yet".
    workdir_lib.CheckpointStore(tmp).save(
        checkpoint, 0, {"step": 0, "converted_from": metadata["converted_from"]},
        best={"converted_from": fmt})
    _move_into_place(tmp, workdir, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return Converted(workdir, flavour, fmt, sha1, note)


def _sha1(path):
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _provenance(fmt, flavour, path, sha1) -> str:
  if fmt == "caffe":
    same = sha1 == BVLC_ALEXNET_SHA1
    return (f"SHA-1 {sha1} {'is' if same else 'is NOT'} the published bvlc_alexnet.caffemodel's "
            f"{BVLC_ALEXNET_SHA1}" + ("" if same else " (another or a modified file)"))
  if fmt == "torchvision":
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    same = digest.hexdigest().startswith(TORCHVISION_SHA256_PREFIX)
    return (f"SHA-256 {digest.hexdigest()[:8]}... {'matches' if same else 'does NOT match'} "
            f"torchvision's published alexnet-owt-{TORCHVISION_SHA256_PREFIX}.pth")
  return f"{fmt} file, {flavour} flavour, SHA-1 {sha1} (no published checksum to compare)"


def _is_conversion(workdir: str) -> bool:
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      return "converted_from" in json.load(f)
  except (OSError, ValueError):
    return False


def _check_workdir_free(workdir: str, overwrite: bool):
  if not os.path.exists(workdir):
    return
  if not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir {workdir} exists and is not a folder.")
  if not os.listdir(workdir):
    return
  if not overwrite:
    raise FileExistsError(f"--workdir {workdir} is not empty; converting writes a new workdir. "
                          "Use another --workdir, or --overwrite to replace an earlier "
                          "conversion.")
  if not _is_conversion(workdir):
    raise FileExistsError(f"--workdir {workdir} holds something other than a conversion (a "
                          "training run?); --overwrite replaces only earlier conversions. Use "
                          "another --workdir.")


def _move_into_place(tmp: str, workdir: str, overwrite: bool):
  if os.path.isdir(workdir) and not os.listdir(workdir):
    os.rmdir(workdir)
  if not os.path.exists(workdir):
    os.rename(tmp, workdir)
    return
  _check_workdir_free(workdir, overwrite)   # again: it may have changed meanwhile
  old = tempfile.mkdtemp(prefix=f".tmp-convert-old-{os.path.basename(workdir)}-",
                         dir=os.path.dirname(workdir))
  os.rename(workdir, os.path.join(old, "workdir"))
  try:
    os.rename(tmp, workdir)
  except BaseException:
    os.rename(os.path.join(old, "workdir"), workdir)
    raise
  shutil.rmtree(old, ignore_errors=True)


def main(argv):
  if len(argv) > 1:
    print(f"convert: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  # SIGTERM ends the conversion like Ctrl-C: the temporary folder is removed on the way out.
  signal.signal(signal.SIGTERM, signal.default_int_handler)
  try:
    result = convert(f.input, f.workdir, f.format, f.mean_file, f.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"convert: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("convert: interrupted; nothing written.", file=sys.stderr)
    return 130
  print(f"Converted {f.input} ({result.format}, {result.flavour} net) into {result.workdir}.\n"
        f"{result.note}.")
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("input", None, "The weights file: .caffemodel, caffe-tensorflow .npy, "
                      "torchvision .pth or .onnx.")
  flags.DEFINE_string("workdir", None, "The workdir to write (must not exist or be empty).")
  flags.DEFINE_enum("format", "auto", ("auto",) + FORMATS, "auto: from the file's content.")
  flags.DEFINE_string("mean_file", None, "Caffe nets: ilsvrc_2012_mean.npy or "
                      "imagenet_mean.binaryproto, to subtract Caffe's per-pixel mean image "
                      "instead of its per-channel mean.")
  flags.DEFINE_boolean("overwrite", False, "Replace an earlier conversion in --workdir "
                       "(never a training run).")
  flags.mark_flags_as_required(["input", "workdir"])


def run():
  """The command (`python -m keras_alexnet.convert`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, _define_flags)


if __name__ == "__main__":
  run()
