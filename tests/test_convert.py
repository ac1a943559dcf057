"""keras_alexnet.convert: each source format, written here with random weights by the source's
own tooling (torch.save, torch.onnx.export / onnx.helper, numpy's pickle, protobuf messages),
converted, and compared with an independent forward pass of the source's semantics
(torch.nn.functional with the source's padding, groups, LRN and flatten order; onnxruntime for
ONNX). End to end for torchvision and Caffe: the commands convert and export, and a fresh
process answers 256x256 PNG bytes with the probabilities of the source's own pipeline.

The nets are the full-size ones (about 61M parameters, 244 MB a file): each test runs one
forward at batch 1-2 and the conversions are shared by module fixtures.
"""

import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
from PIL import Image
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import torch.nn.functional as F  # noqa: E402

from keras_alexnet import convert  # noqa: E402
from keras_alexnet import workdir as workdir_lib  # noqa: E402
from tiny_data import child_env, encode, photo  # noqa: E402  tests/tiny_data.py

ENV = child_env()
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])  # Caffe's example
TORCH_MEAN = np.array([0.485, 0.456, 0.406])
TORCH_STD = np.array([0.229, 0.224, 0.225])
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
CAFFE_SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
                "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216),
                "fc7": (4096, 4096), "fc8": (1000, 4096)}
TORCH_SHAPES = {"conv1": (64, 3, 11, 11), "conv2": (192, 64, 5, 5), "conv3": (384, 192, 3, 3),
                "conv4": (256, 384, 3, 3), "conv5": (256, 256, 3, 3), "fc6": (4096, 9216),
                "fc7": (4096, 4096), "fc8": (1000, 4096)}


def run(args, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600, **kwargs)


def random_params(shapes, seed, input_scale):
  """(out, in/g, kh, kw) / (out, in) weights with He-like scales for inputs of `input_scale`,
  so activations stay O(input) through the net (LRN then matters: alpha/n sum a^2 ~ 1), and
  fc8 small enough that the softmax is not one-hot."""
  rng = np.random.default_rng(seed)
  params = {}
  for layer in LAYERS:
    shape = shapes[layer]
    fan_in = int(np.prod(shape[1:]))
    scale = np.sqrt(2.0 / fan_in) * (1.0 / input_scale if layer == "conv1" else 1.0)
    if layer == "fc8":
      scale *= 0.05
    params[layer] = (rng.normal(0, scale, shape).astype(np.float32),
                     rng.normal(0, 0.1, shape[0]).astype(np.float32))
  return params


# ---------------------------------------------------------------------------------------------
# The sources' semantics, independently, in torch (NCHW).


def caffe_forward(params, x, lrn_k=1.0):
  """bvlc_alexnet's deploy.prototxt: conv1 11/4 unpadded, relu, LRN (local_size 5, alpha 1e-4,
  beta 0.75, k 1; torch divides alpha by size as Caffe does), max pool 3/2 ceil mode, conv2
  pad 2 group 2, ..., conv4/conv5 group 2, fc6 on pool5 flattened (C, H, W)."""
  t = {k: (torch.from_numpy(w), torch.from_numpy(b)) for k, (w, b) in params.items()}

  def lrn(v):
    return F.local_response_norm(v, size=5, alpha=1e-4, beta=0.75, k=lrn_k)

  def pool(v):
    return F.max_pool2d(v, 3, 2, ceil_mode=True)

  x = pool(lrn(F.relu(F.conv2d(x, *t["conv1"], stride=4))))
  x = pool(lrn(F.relu(F.conv2d(x, *t["conv2"], padding=2, groups=2))))
  x = F.relu(F.conv2d(x, *t["conv3"], padding=1))
  x = F.relu(F.conv2d(x, *t["conv4"], padding=1, groups=2))
  x = pool(F.relu(F.conv2d(x, *t["conv5"], padding=1, groups=2)))
  x = torch.flatten(x, 1)
  x = F.relu(F.linear(x, *t["fc6"]))
  x = F.relu(F.linear(x, *t["fc7"]))
  return F.linear(x, *t["fc8"])


class TorchvisionAlexNet(torch.nn.Module):
  """torchvision.models.AlexNet's layout (its state_dict keys), written out here."""

  def __init__(self):
    super().__init__()
    nn = torch.nn
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
        nn.ReLU(), nn.Linear(4096, 1000))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torchvision_module(params):
  net = TorchvisionAlexNet().eval()
  layers = [net.features[i] for i in (0, 3, 6, 8, 10)] + [net.classifier[i] for i in (1, 4, 6)]
  with torch.no_grad():
    for layer, name in zip(layers, LAYERS):
      layer.weight.copy_(torch.from_numpy(params[name][0]))
      layer.bias.copy_(torch.from_numpy(params[name][1]))
  return net


def torchvision_forward(params, x):
  """torchvision's AlexNet in functional form: conv1 padding 2, floor pooling, no LRN."""
  t = {k: (torch.from_numpy(w), torch.from_numpy(b)) for k, (w, b) in params.items()}
  x = F.max_pool2d(F.relu(F.conv2d(x, *t["conv1"], stride=4, padding=2)), 3, 2)
  x = F.max_pool2d(F.relu(F.conv2d(x, *t["conv2"], padding=2)), 3, 2)
  x = F.relu(F.conv2d(x, *t["conv3"], padding=1))
  x = F.relu(F.conv2d(x, *t["conv4"], padding=1))
  x = F.max_pool2d(F.relu(F.conv2d(x, *t["conv5"], padding=1)), 3, 2)
  x = torch.flatten(F.adaptive_avg_pool2d(x, (6, 6)), 1)
  x = F.relu(F.linear(x, *t["fc6"]))
  x = F.relu(F.linear(x, *t["fc7"]))
  return F.linear(x, *t["fc8"])


def caffe_pipeline(image_rgb, params):
  """Caffe's classification: BGR, minus the mean, the 227 crop at (256 - 227) // 2 = 14."""
  bgr = image_rgb[..., ::-1].astype(np.float64) - CAFFE_MEAN_BGR
  crop = bgr[14:14 + 227, 14:14 + 227]
  x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32))
  return torch.softmax(caffe_forward(params, x), -1).numpy()[0]


def torchvision_pipeline(image_rgb, params):
  """torchvision's eval transform of a 256x256 image: Resize(256) is the identity,
  CenterCrop(224) starts at 16, ToTensor /255, Normalize."""
  x = (image_rgb.astype(np.float64) / 255 - TORCH_MEAN) / TORCH_STD
  crop = x[16:240, 16:240]
  x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32))
  return torch.softmax(torchvision_forward(params, x), -1).numpy()[0]


def assert_close(ours, reference):
  """1e-5 relative to the scale of the reference."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


# ---------------------------------------------------------------------------------------------
# The files, in each source's own format.


def write_torchvision(path, params):
  torch.save(torchvision_module(params).state_dict(), path)


def write_npy(path, params):
  """caffe-tensorflow's layout: convs (kh, kw, in/g, out), fc (in, out), fc6's rows in pool5's
  (H, W, C) order; some layers as {'weights', 'biases'}, others as [weights, biases]."""
  out = {}
  for layer, (w, b) in params.items():
    if layer.startswith("conv"):
      w = w.transpose(2, 3, 1, 0)
    elif layer == "fc6":
      w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
    else:
      w = w.T
    out[layer] = {"weights": w, "biases": b} if layer in ("conv1", "fc6") else [w, b]
  np.save(path, out, allow_pickle=True)


def caffe_proto_classes():
  """The messages of caffe.proto that carry weights, with caffe.proto's field numbers, built
  here on their own (not with the converter's schema)."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  F_ = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="test_caffe.proto", package="testcaffe")
  spec = {
      "BlobShape": [("dim", 1, F_.TYPE_INT64, F_.LABEL_REPEATED, None)],
      "BlobProto": [("num", 1, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None),
                    ("channels", 2, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None),
                    ("height", 3, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None),
                    ("width", 4, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None),
                    ("data", 5, F_.TYPE_FLOAT, F_.LABEL_REPEATED, None),
                    ("diff", 6, F_.TYPE_FLOAT, F_.LABEL_REPEATED, None),
                    ("shape", 7, F_.TYPE_MESSAGE, F_.LABEL_OPTIONAL, "BlobShape")],
      "V1LayerParameter": [("bottom", 2, F_.TYPE_STRING, F_.LABEL_REPEATED, None),
                           ("top", 3, F_.TYPE_STRING, F_.LABEL_REPEATED, None),
                           ("name", 4, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None),
                           ("type", 5, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None),
                           ("blobs", 6, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, "BlobProto")],
      "LayerParameter": [("name", 1, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None),
                         ("type", 2, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None),
                         ("bottom", 3, F_.TYPE_STRING, F_.LABEL_REPEATED, None),
                         ("top", 4, F_.TYPE_STRING, F_.LABEL_REPEATED, None),
                         ("blobs", 7, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, "BlobProto")],
      "NetParameter": [("name", 1, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None),
                       ("layers", 2, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, "V1LayerParameter"),
                       ("layer", 100, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, "LayerParameter")],
  }
  for name, fields in spec.items():
    message = proto.message_type.add(name=name)
    for field, number, kind, label, type_name in fields:
      f = message.field.add(name=field, number=number, type=kind, label=label)
      if type_name:
        f.type_name = f".testcaffe.{type_name}"
      if kind == F_.TYPE_FLOAT or field == "dim":
        f.options.packed = True
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"testcaffe.{name}"))
          for name in spec}


def write_caffemodel(path, params, layout):
  """layout "new": NetParameter.layer (type strings, BlobShape dims); "v1": the old
  NetParameter.layers (V1 enum types, legacy num/channels/height/width dims, fc as
  (1, 1, out, in)), with the data layers, ReLUs and LRNs around as a real file has them."""
  m = caffe_proto_classes()
  net = m["NetParameter"](name="AlexNet")
  others = {"relu1": "ReLU", "norm1": "LRN", "pool1": "Pooling", "drop6": "Dropout"}
  if layout == "new":
    net.layer.add(name="data", type="Input", top=["data"])
    for name in LAYERS:
      layer = net.layer.add(name=name, type="Convolution" if name[:4] == "conv" else
                            "InnerProduct")
      for array in params[name]:
        blob = layer.blobs.add()
        blob.shape.dim.extend(array.shape)
        blob.data.extend(array.ravel().tolist())
      if name == "conv1":
        for other, kind in others.items():
          net.layer.add(name=other, type=kind)
  else:
    net.layers.add(name="data", type=5)                   # DATA
    for name in LAYERS:
      layer = net.layers.add(name=name, type=4 if name[:4] == "conv" else 14)
      for array in params[name]:
        dims = (1,) * (4 - array.ndim) + array.shape
        blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
        blob.data.extend(array.ravel().tolist())
      if name == "conv1":
        net.layers.add(name="relu1", type=18)
        net.layers.add(name="norm1", type=15)
  with open(path, "wb") as f:
    f.write(net.SerializeToString())


def write_caffe_onnx(path, params, size=224, fc="gemm"):
  """The ONNX model zoo's bvlcalexnet layout (a Caffe net through caffe2): NCHW BGR input of
  224, LRN nodes, pool1 padded at the bottom/right to Caffe's ceil size, softmax output.
  size 227: ceil_mode pools instead of pads; fc "matmul": MatMul + Add in place of Gemm."""
  from onnx import TensorProto, helper, numpy_helper
  nodes, inits = [], []

  def init(name, array):
    inits.append(numpy_helper.from_array(array, name))
    return name

  def conv(x, layer, pads, group, stride=1):
    w, b = params[layer]
    nodes.append(helper.make_node("Conv", [x, init(f"{layer}_w", w), init(f"{layer}_b", b)],
                                  [layer], name=layer, kernel_shape=list(w.shape[2:]),
                                  strides=[stride] * 2, pads=[pads] * 4, group=group))
    nodes.append(helper.make_node("Relu", [layer], [f"{layer}_relu"]))
    return f"{layer}_relu"

  def lrn(x, name):
    nodes.append(helper.make_node("LRN", [x], [name], size=5, alpha=1e-4, beta=0.75, bias=1.0))
    return name

  def pool(x, name, pads):
    extra = {"pads": pads} if size == 224 else {"ceil_mode": 1}
    nodes.append(helper.make_node("MaxPool", [x], [name], kernel_shape=[3, 3], strides=[2, 2],
                                  **extra))
    return name

  x = pool(lrn(conv("data_0", "conv1", 0, 1, 4), "norm1"), "pool1", [0, 0, 1, 1])
  x = pool(lrn(conv(x, "conv2", 2, 2), "norm2"), "pool2", [0, 0, 0, 0])
  x = conv(conv(x, "conv3", 1, 1), "conv4", 1, 2)
  x = pool(conv(x, "conv5", 1, 2), "pool5", [0, 0, 0, 0])
  nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
  x = "flat"
  for layer in ("fc6", "fc7", "fc8"):
    w, b = params[layer]
    if fc == "gemm":
      nodes.append(helper.make_node("Gemm", [x, init(f"{layer}_w", w), init(f"{layer}_b", b)],
                                    [layer], transB=1))
    else:
      nodes.append(helper.make_node("MatMul", [x, init(f"{layer}_w", w.T.copy())],
                                    [f"{layer}_mm"]))
      nodes.append(helper.make_node("Add", [f"{layer}_mm", init(f"{layer}_b", b)], [layer]))
    x = layer
    if layer != "fc8":
      nodes.append(helper.make_node("Relu", [x], [f"{layer}_relu"]))
      nodes.append(helper.make_node("Dropout", [f"{layer}_relu"], [f"{layer}_drop"]))
      x = f"{layer}_drop"
  nodes.append(helper.make_node("Softmax", [x], ["prob_1"], axis=1))
  graph = helper.make_graph(
      nodes, "bvlcalexnet", [helper.make_tensor_value_info("data_0", TensorProto.FLOAT,
                                                           [1, 3, size, size])],
      [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, 1000])], inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  onnx.checker.check_model(model)
  onnx.save(model, path)


# ---------------------------------------------------------------------------------------------
# Fixtures: the params, the files and their conversions (shared, the nets are big).


@pytest.fixture(scope="module")
def caffe_params():
  return random_params(CAFFE_SHAPES, seed=1, input_scale=1.0)   # pixels minus the mean


@pytest.fixture(scope="module")
def torch_params():
  return random_params(TORCH_SHAPES, seed=2, input_scale=1.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def image():
  """A 256x256 photo-like RGB image and its PNG bytes (exact through any decoder)."""
  array = photo(256, 256, 5)
  return array, encode(array, "PNG")


def converted_model(path, workdir):
  result = convert.convert(str(path), str(workdir))
  model, metadata = workdir_lib.load_model(str(workdir))
  return result, model, metadata


def keras_logits(model, crop_hwc):
  return model(crop_hwc[None].astype(np.float32), training=False).numpy()[0]


def caffe_crop(image_rgb, size=227):
  """What the export feeds the Caffe-flavour model: RGB minus Caffe's mean (the model turns it
  to BGR itself), the centre crop at (256 - size) // 2."""
  o = (256 - size) // 2
  return (image_rgb.astype(np.float64) - CAFFE_MEAN_BGR[::-1])[o:o + size, o:o + size]


def torch_crop(image_rgb):
  return (image_rgb.astype(np.float64) - 255 * TORCH_MEAN)[16:240, 16:240]


def nchw(array_hwc):
  return np.ascontiguousarray(array_hwc.transpose(2, 0, 1)[None], np.float32)


# ---------------------------------------------------------------------------------------------
# Each format: converted logits = the source's semantics.


def test_torchvision_state_dict(torch_params, files, image, tmp_path):
  path = files / "alexnet-owt-random.pth"
  write_torchvision(path, torch_params)
  assert convert.detect_format(str(path)) == "torchvision"
  result, model, metadata = converted_model(path, tmp_path / "wd")
  assert result.flavour == "torchvision"
  assert "does NOT match torchvision's published" in result.note
  assert metadata["converted_from"]["format"] == "torchvision"
  assert model.input_shape == (None, 224, 224, 3)
  crop = torch_crop(image[0])
  # The source's input: (x / 255 - mean) / std, NCHW.
  reference = torchvision_forward(torch_params, torch.from_numpy(nchw(crop / 255 / TORCH_STD)))
  assert_close(keras_logits(model, crop), reference.numpy()[0])
  # The module itself (torchvision's layout, AdaptiveAvgPool and all) agrees with the
  # functional form the comparisons use.
  module = torchvision_module(torch_params)
  with torch.no_grad():
    assert_close(module(torch.from_numpy(nchw(crop / 255 / TORCH_STD))).numpy()[0],
                 reference.numpy()[0])


@pytest.mark.parametrize("layout", ["new", "v1"])
def test_caffemodel(layout, caffe_params, files, image, tmp_path):
  path = files / f"bvlc_alexnet_{layout}.caffemodel"
  write_caffemodel(path, caffe_params, layout)
  assert convert.detect_format(str(path)) == "caffe"
  result, model, metadata = converted_model(path, tmp_path / "wd")
  assert result.flavour == "caffe" and "is NOT the published" in result.note
  assert convert.BVLC_ALEXNET_SHA1 in result.note
  assert model.input_shape == (None, 227, 227, 3)
  crop = caffe_crop(image[0])
  reference = caffe_forward(caffe_params, torch.from_numpy(nchw(crop[..., ::-1])))
  logits = keras_logits(model, crop)
  assert_close(logits, reference.numpy()[0])
  # LRN matters at these activations: with the paper's k=2 the logits would differ clearly.
  paper_k = caffe_forward(caffe_params, torch.from_numpy(nchw(crop[..., ::-1])), lrn_k=2.0)
  assert np.abs(paper_k.numpy()[0] - logits).max() > 0.05 * np.abs(logits).max()


def test_caffe_tensorflow_npy(caffe_params, files, image, tmp_path):
  path = files / "bvlc_alexnet.npy"
  write_npy(path, caffe_params)
  assert convert.detect_format(str(path)) == "npy"
  result, model, _ = converted_model(path, tmp_path / "wd")
  assert result.flavour == "caffe"
  crop = caffe_crop(image[0])
  reference = caffe_forward(caffe_params, torch.from_numpy(nchw(crop[..., ::-1])))
  assert_close(keras_logits(model, crop), reference.numpy()[0])


@pytest.mark.parametrize("size, fc", [(224, "gemm"), (227, "matmul")])
def test_onnx_caffe_layout(size, fc, caffe_params, files, image, tmp_path):
  """Caffe's net at the zoo's 224 input: conv1 unpadded gives 54, Caffe's ceil pooling 27
  (here by pads); at 227 by ceil_mode, with MatMul + Add for the fc layers."""
  path = files / f"bvlcalexnet_{size}_{fc}.onnx"
  write_caffe_onnx(path, caffe_params, size=size, fc=fc)
  assert convert.detect_format(str(path)) == "onnx"
  result, model, metadata = converted_model(path, tmp_path / "wd")
  assert result.flavour == "caffe"
  assert metadata["model_config"]["ceil_pooling"] is True
  assert model.input_shape == (None, size, size, 3)
  crop = caffe_crop(image[0], size)
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  expected = session.run(None, {"data_0": nchw(crop[..., ::-1])})[0][0]
  probabilities = model.predict_on_batch(crop[None].astype(np.float32))
  ours = np.exp(probabilities[0] - probabilities[0].max())
  assert_close(ours / ours.sum(), expected)
  # And the independent torch forward agrees with onnxruntime on this graph.
  assert_close(torch.softmax(caffe_forward(caffe_params, torch.from_numpy(
      nchw(crop[..., ::-1]))), -1).numpy()[0], expected)


class CaffeAlexNet(torch.nn.Module):
  """bvlc_alexnet's deploy.prototxt as torch modules (for torch.onnx.export, which writes LRN
  as its decomposition into Mul, Pad, AveragePool, Add, Pow and Div)."""

  def __init__(self, params):
    super().__init__()
    nn = torch.nn
    convs = [nn.Conv2d(3, 96, 11, 4), nn.Conv2d(96, 256, 5, padding=2, groups=2),
             nn.Conv2d(256, 384, 3, padding=1), nn.Conv2d(384, 384, 3, padding=1, groups=2),
             nn.Conv2d(384, 256, 3, padding=1, groups=2)]
    fcs = [nn.Linear(9216, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)]
    with torch.no_grad():
      for layer, name in zip(convs + fcs, LAYERS):
        layer.weight.copy_(torch.from_numpy(params[name][0]))
        layer.bias.copy_(torch.from_numpy(params[name][1]))
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    self.net = nn.Sequential(
        convs[0], nn.ReLU(), lrn(), pool(), convs[1], nn.ReLU(), lrn(), pool(),
        convs[2], nn.ReLU(), convs[3], nn.ReLU(), convs[4], nn.ReLU(), pool(), nn.Flatten(),
        fcs[0], nn.ReLU(), nn.Dropout(), fcs[1], nn.ReLU(), nn.Dropout(), fcs[2])

  def forward(self, x):
    return self.net(x)


def test_onnx_torch_export_of_caffes_net(caffe_params, files, image, tmp_path):
  path = files / "caffe_torch_export.onnx"
  torch.onnx.export(CaffeAlexNet(caffe_params).eval(), torch.zeros(1, 3, 227, 227), str(path),
                    dynamo=False, input_names=["data"])
  result, model, _ = converted_model(path, tmp_path / "wd")
  assert result.flavour == "caffe"
  crop = caffe_crop(image[0])
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  expected = session.run(None, {"data": nchw(crop[..., ::-1])})[0][0]
  assert_close(keras_logits(model, crop), expected)


def test_onnx_torch_export(torch_params, files, image, tmp_path):
  path = files / "alexnet_torchvision.onnx"
  module = torchvision_module(torch_params)
  torch.onnx.export(module, torch.zeros(1, 3, 224, 224), str(path), dynamo=False,
                    input_names=["input"])
  result, model, _ = converted_model(path, tmp_path / "wd")
  assert result.flavour == "torchvision"
  crop = torch_crop(image[0])
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  expected = session.run(None, {"input": nchw(crop / 255 / TORCH_STD)})[0][0]
  assert_close(keras_logits(model, crop), expected)


# ---------------------------------------------------------------------------------------------
# End to end: the commands, then the SavedModel in a fresh process on PNG bytes.

SERVE = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([open(sys.argv[2], "rb").read()]))
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
""")


def _convert_export_serve(weights, png, tmp_path):
  workdir, base = tmp_path / "workdir", tmp_path / "models"
  result = run([sys.executable, "-m", "keras_alexnet.convert", f"--input={weights}",
                f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr[-3000:]
  result = run([sys.executable, "-m", "keras_alexnet.export", f"--workdir={workdir}",
                f"--export_dir={base}"])
  assert result.returncode == 0, result.stderr[-3000:]
  (tmp_path / "image.png").write_bytes(png)
  (tmp_path / "serve.py").write_text(SERVE)
  result = run([sys.executable, str(tmp_path / "serve.py"), str(base / "1"),
                str(tmp_path / "image.png"), str(tmp_path / "out.npz")])
  assert result.returncode == 0, result.stderr[-3000:]
  return np.load(tmp_path / "out.npz", allow_pickle=True), str(workdir)  # written above


def test_caffe_end_to_end(caffe_params, files, image, tmp_path):
  weights = files / "bvlc_alexnet_e2e.caffemodel"
  write_caffemodel(weights, caffe_params, "new")
  out, _ = _convert_export_serve(weights, image[1], tmp_path)
  assert np.array_equal(np.asarray(Image.open(tmp_path / "image.png")), image[0])
  expected = caffe_pipeline(image[0], caffe_params)
  assert_close(out["probabilities"][0], expected)
  assert out["top5_classes"][0].tolist() == np.argsort(-expected)[:5].tolist()
  # The packaged WordNet names label the classes.
  assert out["top5_wnids"][0, 0].decode().startswith("n")


def test_torchvision_end_to_end(torch_params, files, image, tmp_path):
  weights = files / "alexnet_e2e.pth"
  write_torchvision(weights, torch_params)
  out, _ = _convert_export_serve(weights, image[1], tmp_path)
  expected = torchvision_pipeline(image[0], torch_params)
  assert_close(out["probabilities"][0], expected)
  assert out["top5_classes"][0].tolist() == np.argsort(-expected)[:5].tolist()


# ---------------------------------------------------------------------------------------------
# Fine-tuning from a converted net.


def test_converted_net_fine_tunes_one_step(caffe_params, files, tmp_path):
  from keras_alexnet import config as config_lib
  from keras_alexnet import data_sources
  from keras_alexnet import model as model_lib
  from keras_alexnet import preprocessing
  from keras_alexnet import training
  import tiny_data
  weights = files / "bvlc_alexnet_finetune.npy"
  write_npy(weights, caffe_params)
  source = str(tmp_path / "converted")
  convert.convert(str(weights), source)
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=5, train=2,
                                     validation=2)
  config = config_lib.Config(
      model=model_lib.ModelConfig(num_classes=None),
      data=data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=2),
      augment=preprocessing.AugmentConfig(random_crop=False, mirror=False, pca_lighting=False),
      train=config_lib.TrainConfig(batch_size=2, epochs=1, steps_per_epoch=1, eval_steps=1,
                                   log_every_steps=1, lr_scaling="none", learning_rate=0.001,
                                   summary_images=False, init_checkpoint=source,
                                   trainable_from="fc8"))
  run_dir = str(tmp_path / "finetune")
  result = training.train_and_evaluate(config, run_dir)
  assert result["step"] == 1 and np.isfinite(result["validation"]["loss"])
  model, metadata = workdir_lib.load_model(run_dir, "latest")
  # The source's architecture, on the trainer's 224 crops (Caffe's ceil pooling reaches 6x6).
  kept = metadata["model_config"]
  assert (kept["bgr"], kept["lrn_bias"], kept["lrn_towers"], kept["ceil_pooling"],
          kept["conv1_padding"], kept["input_shape"]) == (True, 1.0, 1, True, [0, 0, 0, 0],
                                                          [224, 224, 3])
  np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                caffe_params["conv1"][0].transpose(2, 3, 1, 0))
  assert model.get_layer("fc8").kernel.shape == (4096, 5)


# ---------------------------------------------------------------------------------------------
# Bad input: exit code != 0, a message naming the problem, nothing written.


def _convert_cli(*args):
  return run([sys.executable, "-m", "keras_alexnet.convert", *args])


def _nothing_written(parent, workdir):
  assert not os.path.exists(workdir)
  assert not [n for n in os.listdir(parent) if n.startswith(".tmp-convert")]


def test_unknown_and_truncated_files(tmp_path):
  junk = tmp_path / "junk.bin"
  junk.write_bytes(np.random.default_rng(0).bytes(4096))
  result = _convert_cli(f"--input={junk}", f"--workdir={tmp_path / 'wd'}")
  assert result.returncode == 2
  assert "none of the known formats" in result.stderr and str(junk) in result.stderr
  _nothing_written(tmp_path, tmp_path / "wd")

  # Truncated files of each kind: the reader says it cannot read them.
  torch_file = tmp_path / "cut.pth"
  torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, torch_file)
  npy_file = tmp_path / "cut.npy"
  np.save(npy_file, {"conv1": [np.zeros((11, 11, 3, 96), np.float32)]}, allow_pickle=True)
  caffe_file = tmp_path / "cut.caffemodel"
  write_caffemodel(caffe_file, {k: (np.zeros((2, 2), np.float32), np.zeros(2, np.float32))
                                for k in LAYERS}, "new")
  for path, fmt, message in ((torch_file, "torchvision", "not a readable torch file"),
                             (npy_file, "npy", "does not load (truncated?)"),
                             (caffe_file, "caffe", "not a Caffe NetParameter")):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(convert.ConversionError, match=re.escape(message)):
      convert.convert(str(path), str(tmp_path / "wd"), format=fmt)
    _nothing_written(tmp_path, tmp_path / "wd")
  with pytest.raises(convert.ConversionError, match="none of the known formats"):
    convert.convert(str(caffe_file), str(tmp_path / "wd"))


def test_another_network_names_the_first_tensor_that_does_not_fit(torch_params, tmp_path):
  resnet = tmp_path / "resnet18.pth"
  torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
              "bn1.bias": torch.zeros(64), "fc.weight": torch.zeros(1000, 512)}, resnet)
  result = _convert_cli(f"--input={resnet}", f"--workdir={tmp_path / 'wd'}")
  assert result.returncode == 2
  assert "conv1.weight with shape (64, 3, 7, 7)" in result.stderr
  assert "features.0.weight" in result.stderr and "(64, 3, 11, 11)" in result.stderr
  _nothing_written(tmp_path, tmp_path / "wd")

  ten = tmp_path / "alexnet10.pth"
  params = dict(torch_params)
  params["fc8"] = (np.zeros((10, 4096), np.float32), np.zeros(10, np.float32))
  state = {f"{key}.{p}": torch.from_numpy(params[layer][i]) for layer, key in
           convert.TORCHVISION_KEYS.items() for i, p in enumerate(("weight", "bias"))}
  torch.save(state, ten)
  result = _convert_cli(f"--input={ten}", f"--workdir={tmp_path / 'wd'}")
  assert result.returncode == 2
  assert "classifier.6 weights have shape (10, 4096)" in result.stderr
  assert "expects (1000, 4096)" in result.stderr
  _nothing_written(tmp_path, tmp_path / "wd")


class Armed:
  """Unpickling this runs a shell command (touch MARKER)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


UNSAFE_LOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    if sys.argv[1].endswith(".npy"):
      np.load(sys.argv[1], allow_pickle=True)
    else:
      torch.load(sys.argv[1], weights_only=False)
""")


@pytest.mark.parametrize("kind", ["npy", "pth"])
def test_a_pickle_that_calls_a_function_is_refused_unexecuted(kind, tmp_path):
  marker = tmp_path / "executed"
  path = tmp_path / f"evil.{kind}"
  if kind == "npy":
    np.save(path, {"conv1": [Armed(marker), Armed(marker)]}, allow_pickle=True)
  else:
    torch.save({"features.0.weight": Armed(marker)}, path)
  result = _convert_cli(f"--input={path}", f"--workdir={tmp_path / 'wd'}")
  assert result.returncode == 2
  assert "refused" in result.stderr and "system" in result.stderr, result.stderr
  assert not marker.exists()
  _nothing_written(tmp_path, tmp_path / "wd")
  # The file is armed: an unrestricted load runs the command.
  (tmp_path / "unsafe.py").write_text(UNSAFE_LOAD)
  run([sys.executable, str(tmp_path / "unsafe.py"), str(path)])
  assert marker.exists()


def test_a_workdir_holding_another_run_is_refused(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text('{"model_config": {}, "num_classes": 5}')
  (workdir / "checkpoints" / "mine").write_text("a user's file")
  before = sorted((p.relative_to(workdir), p.read_bytes() if p.is_file() else None)
                  for p in workdir.rglob("*"))
  weights = tmp_path / "w.npy"
  np.save(weights, {"conv1": [np.zeros(1), np.zeros(1)]}, allow_pickle=True)
  for extra in ((), ("--overwrite",)):
    result = _convert_cli(f"--input={weights}", f"--workdir={workdir}", *extra)
    assert result.returncode == 2
    assert str(workdir) in result.stderr and ("not empty" in result.stderr
                                              or "other than a conversion" in result.stderr)
  after = sorted((p.relative_to(workdir), p.read_bytes() if p.is_file() else None)
                 for p in workdir.rglob("*"))
  assert after == before
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-convert")]


def test_sigterm_mid_conversion_leaves_nothing(torch_params, files, tmp_path):
  weights = files / "alexnet_sigterm.pth"
  write_torchvision(weights, torch_params)
  workdir = tmp_path / "wd"
  process = subprocess.Popen([sys.executable, "-m", "keras_alexnet.convert",
                              f"--input={weights}", f"--workdir={workdir}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
  # Wait for the temporary workdir (the checkpoint is being written into it), then SIGTERM.
  deadline = time.monotonic() + 300
  while (not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-convert")]
         and process.poll() is None and time.monotonic() < deadline):
    time.sleep(0.05)
  process.terminate()
  _, stderr = process.communicate(timeout=120)
  if process.returncode == 0:
    pytest.skip("the conversion finished before SIGTERM arrived")
  assert process.returncode == 130, stderr[-2000:]
  assert "interrupted; nothing written" in stderr
  _nothing_written(tmp_path, workdir)
