"""keras_alexnet.applications: keras.applications-style AlexNet, preprocess_input and
decode_predictions; shapes for each top/pooling choice, the argument errors, and pretrained
weights from a converted workdir (a caffe-tensorflow .npy written here with random weights)."""

import numpy as np
import pytest
import keras

from keras_alexnet import applications
from keras_alexnet import convert
from keras_alexnet import workdir as workdir_lib


@pytest.fixture(scope="module")
def caffe_npy(tmp_path_factory):
  """Random weights in caffe-tensorflow's .npy layout (numpy only, no torch needed)."""
  rng = np.random.default_rng(3)
  shapes = convert.SHAPES["caffe"]
  layers = {}
  for name, (out, *rest) in shapes.items():
    fan_in = int(np.prod(rest))
    w = rng.normal(0, np.sqrt(2 / fan_in), (out, *rest)).astype(np.float32)
    if name.startswith("conv"):
      w = w.transpose(2, 3, 1, 0)
    elif name == "fc6":
      w = w.reshape(out, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, out)
    else:
      w = w.T
    layers[name] = [w, rng.normal(0, 0.1, out).astype(np.float32)]
  path = tmp_path_factory.mktemp("npy") / "bvlc_alexnet.npy"
  np.save(path, layers, allow_pickle=True)
  return str(path)


@pytest.fixture(scope="module")
def caffe_workdir(caffe_npy, tmp_path_factory):
  """Their conversion."""
  workdir = str(tmp_path_factory.mktemp("converted") / "caffe")
  convert.convert(caffe_npy, workdir)
  return workdir


@pytest.mark.parametrize("kind", ["npy", "binaryproto"])
def test_caffes_mean_image_by_flag(kind, caffe_npy, tmp_path):
  """--mean_file: Caffe's BGR (3, 256, 256) mean, as ilsvrc_2012_mean.npy or a BlobProto,
  becomes the workdir's per-pixel RGB mean image."""
  mean_bgr = np.random.default_rng(4).uniform(90, 130, (3, 256, 256)).astype(np.float32)
  path = tmp_path / f"mean.{kind}"
  if kind == "npy":
    np.save(path, mean_bgr)
  else:
    blob = convert._caffe_messages()["BlobProto"](num=1, channels=3, height=256, width=256)
    blob.data.extend(mean_bgr.ravel().tolist())
    path.write_bytes(blob.SerializeToString())
  workdir = str(tmp_path / "wd")
  convert.convert(caffe_npy, workdir, mean_file=str(path))
  stats = workdir_lib.load_statistics(workdir)
  np.testing.assert_array_equal(stats.mean_image, mean_bgr[::-1].transpose(1, 2, 0))
  assert workdir_lib.read_metadata(workdir)["augment"]["mean"] == "per_pixel"
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((256, 256, 3), np.float32))
  with pytest.raises(convert.ConversionError, match=r"BGR mean of shape \(3, 256, 256\)"):
    convert.convert(caffe_npy, str(tmp_path / "wd2"), mean_file=str(bad))


def test_top_shapes_per_flavour():
  for flavour, size in (("paper", 224), ("caffe", 227)):
    model = applications.AlexNet(flavour=flavour)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 1000)
    out = model(np.zeros((1, size, size, 3), np.float32)).numpy()
    np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-5)   # softmax by default
  logits = applications.AlexNet(flavour="torchvision", classes=10, classifier_activation=None)
  assert logits.output_shape == (None, 10)
  assert not isinstance(logits.layers[-1], keras.layers.Softmax)


@pytest.mark.parametrize("pooling, shape", [(None, (None, 8, 8, 256)), ("avg", (None, 256)),
                                            ("max", (None, 256))])
def test_trunk_shapes(pooling, shape):
  # 288: conv1 (288 + 3 - 11) // 4 + 1 = 71, pools 35, 17, 8.
  model = applications.AlexNet(include_top=False, input_shape=(288, 288, 3), pooling=pooling)
  assert model.output_shape == shape
  assert model(np.zeros((2, 288, 288, 3), np.float32)).shape == (2, *shape[1:])


def test_trunk_takes_any_size_without_an_input_shape():
  model = applications.AlexNet(include_top=False, flavour="caffe")
  assert model.input_shape == (None, None, None, 3)
  # Caffe's ceil pooling: 300 -> conv1 73 -> 36 -> 18 -> 9 (floor would give 8).
  assert model(np.zeros((1, 300, 300, 3), np.float32)).shape == (1, 9, 9, 256)
  tensor = keras.Input((256, 256, 3))
  assert applications.AlexNet(include_top=False, input_tensor=tensor).output_shape == (
      None, 7, 7, 256)


def test_pretrained_weights_are_the_converted_net(caffe_workdir):
  source, _ = workdir_lib.load_model(caffe_workdir)
  x = applications.preprocess_input(
      np.random.default_rng(0).uniform(0, 255, (2, 227, 227, 3)), flavour="caffe")
  model = applications.AlexNet(weights=caffe_workdir, flavour="caffe")
  expected = keras.ops.softmax(source(x)).numpy()
  np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-7)
  trunk = applications.AlexNet(include_top=False, weights=caffe_workdir, flavour="caffe",
                               input_shape=(227, 227, 3))
  pool5 = keras.Model(source.input, source.get_layer("pool5").output)
  np.testing.assert_allclose(trunk(x).numpy(), pool5(x).numpy(), rtol=1e-5, atol=1e-5)
  decoded = applications.decode_predictions(model(x).numpy(), top=3)
  assert len(decoded) == 2 and len(decoded[0]) == 3
  wnid, name, score = decoded[0][0]
  assert wnid.startswith("n") and name and score == pytest.approx(expected[0].max())


def test_preprocess_input_subtracts_the_flavours_mean():
  image = np.full((1, 2, 2, 3), 200, np.uint8)
  np.testing.assert_allclose(applications.preprocess_input(image, "caffe")[0, 0, 0],
                             200 - np.array([122.67891434, 116.66876762, 104.00698793]),
                             rtol=1e-6)
  np.testing.assert_allclose(applications.preprocess_input(image, "torchvision")[0, 0, 0],
                             200 - 255 * np.array([0.485, 0.456, 0.406]), rtol=1e-6)
  tensor = applications.preprocess_input(keras.ops.ones((1, 2, 2, 3)) * 200, "paper")
  np.testing.assert_allclose(np.asarray(tensor)[0, 0, 0],
                             200 - np.array([123.675, 116.28, 103.53]), rtol=1e-6)
  with pytest.raises(ValueError, match="RGB images"):
    applications.preprocess_input(np.zeros((2, 2)), "paper")


def test_decode_predictions():
  preds = np.zeros((1, 1000), np.float32)
  preds[0, [0, 1, 2]] = [0.2, 0.7, 0.1]
  assert applications.decode_predictions(preds, top=2) == [
      [("n01443537", "goldfish", pytest.approx(0.7)), ("n01440764", "tench", pytest.approx(0.2))]]
  with pytest.raises(ValueError, match=r"expects a batch of predictions .* \(1, 10\)"):
    applications.decode_predictions(np.zeros((1, 10)))


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": "/nonexistent/run"}, "The `weights` argument should be either `None`"),
    ({"weights": "imagenet"}, "Received: weights=imagenet"),
    ({"input_shape": (300, 300, 3)}, "When setting `include_top=True`, `input_shape` should be "
                                     "(224, 224, 3).  Received: input_shape=(300, 300, 3)"),
    ({"include_top": False, "input_shape": (300, 300)}, "must be a tuple of three integers"),
    ({"include_top": False, "input_shape": (300, 300, 1)}, "The input must have 3 channels"),
    ({"include_top": False, "input_shape": (40, 40, 3)}, "Input size must be at least 64x64"),
    ({"include_top": False, "pooling": "sum"}, "`pooling` must be None, 'avg' or 'max'"),
    ({"flavour": "vgg"}, "`flavour` must be one of"),
    ({"classes": 1}, "`classes` must be an integer >= 2"),
])
def test_argument_errors(kwargs, message):
  with pytest.raises(ValueError) as error:
    applications.AlexNet(**kwargs)
  assert message in str(error.value)


def test_argument_errors_with_weights(caffe_workdir):
  with pytest.raises(ValueError, match="`classes` should be 1000.  Received classes=10"):
    applications.AlexNet(weights=caffe_workdir, flavour="caffe", classes=10)
  with pytest.raises(ValueError, match="Only `None` and `softmax` activations are allowed"):
    applications.AlexNet(weights=caffe_workdir, flavour="caffe", classifier_activation="relu")
  with pytest.raises(ValueError, match="pass flavour='caffe'"):
    applications.AlexNet(weights=caffe_workdir)
  # Without the top, any classes are fine (as in keras.applications).
  trunk = applications.AlexNet(include_top=False, weights=caffe_workdir, flavour="caffe",
                               classes=10, pooling="avg")
  assert trunk.output_shape == (None, 256)


def test_evaluate_takes_a_converted_caffe_net(caffe_workdir, tmp_path):
  """evaluate crops 227 for the Caffe net (centre at 14, ten views at 0/29/14), the workdir's
  mean; a 224 crop would fail on the model's input shape."""
  from keras_alexnet import config as config_lib
  from keras_alexnet import evaluate
  import tiny_data
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=1000, train=1,
                                     validation=2, train_shards=1)
  results = evaluate.evaluate(config_lib.EvalConfig(
      workdirs=(caffe_workdir,), data_dir=data_dir, views=("center", "ten"), batch_size=2,
      output=str(tmp_path / "evaluation.json")))
  assert results["examples"] == 2
  (model,) = results["models"]
  for view in ("center", "ten"):
    assert 0.0 <= model[view]["top1_error"] <= 1.0 and 0.0 <= model[view]["top5_error"] <= 1.0
