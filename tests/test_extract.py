"""python -m keras_alexnet.extract: features equal the model's layer output; bad files listed,
the rest extracted; a bad --layer refused before any work."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from keras_alexnet import dataset_info
from keras_alexnet import extract
from keras_alexnet import model as model_lib
from keras_alexnet import workdir as workdir_lib
import tiny_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("extract")
  data_dir = tiny_data.write_dataset(str(root / "data"), num_classes=4, train=8, validation=4)
  return tiny_data.make_workdir(str(root / "run"), data_dir, seed=3)


def _pngs(folder, count):
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i in range(count):
    path = os.path.join(folder, f"image_{i}.png")
    Image.fromarray(tiny_data.photo(256, 256, 40 + i)).save(path)   # 256x256: no resize
    paths.append(path)
  return paths


def test_extract_command_writes_the_layers_output(run, tmp_path):
  paths = _pngs(str(tmp_path / "images"), 5)
  (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")
  out = tmp_path / "features.npz"
  result = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.extract", f"--workdir={run}", "--layer=pool2",
       "--batch_size=2", f"--output={out}", str(tmp_path / "images"),
       str(tmp_path / "missing.jpg")],
      capture_output=True, text=True, env=tiny_data.child_env(), timeout=300)
  assert result.returncode == extract.EXIT_FAILED_IMAGES, result.stderr[-2000:]
  assert "broken.png: cannot decode" in result.stderr
  assert "missing.jpg: cannot read" in result.stderr
  with np.load(out) as z:
    assert list(z["files"]) == sorted(paths)
    assert sorted(os.path.basename(f) for f in z["failed"]) == ["broken.png", "missing.jpg"]
    assert str(z["layer"]) == "pool2"
    features = z["features"]
  # Independently: the centre 224 crop minus the run's mean, through the model's own layers.
  model, _ = workdir_lib.load_model(run)
  stats = workdir_lib.load_statistics(run)
  pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(paths)])
  mean = (stats.mean_rgb if stats.mean_image is None       # tiny_data has no mean image
          else stats.mean_image[16:240, 16:240])
  crops = pixels[:, 16:240, 16:240].astype(np.float32) - mean
  x = crops
  for name in ("conv1", "pool1", "conv2", "pool2"):
    x = model.get_layer(name)(x)
  assert features.shape == (5, 16)
  np.testing.assert_allclose(features, np.asarray(x), rtol=1e-5, atol=1e-5)


def test_fc7_is_the_relu_of_fc6_and_fc7_over_pool5():
  net = model_lib.alexnet(num_classes=5, init="he")
  images = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
  stats = dataset_info.imagenet_statistics()
  fc7 = extract.features_of(extract.layer_model(net, "fc7"), images, stats, "per_channel")
  pool5 = extract.features_of(extract.layer_model(net, "pool5"), images, stats, "per_channel")
  assert fc7.shape == (2, 4096) and pool5.shape == (2, 6, 6, 256)
  w6, b6 = (v.numpy() for v in net.get_layer("fc6").weights)
  w7, b7 = (v.numpy() for v in net.get_layer("fc7").weights)
  fc6 = np.maximum(pool5.reshape(2, -1).astype(np.float64) @ w6 + b6, 0)
  np.testing.assert_allclose(fc7, np.maximum(fc6 @ w7 + b7, 0), rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match=r"--layer='fc9' is not a layer of this model; it has "
                     r"conv1_pad, conv1, .*fc7, dropout7, fc8"):
    extract.layer_model(net, "fc9")


def test_bad_layer_is_refused_before_anything_is_written(run, tmp_path):
  _pngs(str(tmp_path / "images"), 1)
  out = tmp_path / "features.npz"
  result = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.extract", f"--workdir={run}", "--layer=fc7",
       f"--output={out}", str(tmp_path / "images")],
      capture_output=True, text=True, env=tiny_data.child_env(), timeout=300)
  assert result.returncode != 0
  assert "--layer='fc7' is not a layer of this model" in result.stderr
  assert not out.exists()
  # An existing output is the user's: replaced only with --overwrite.
  out.write_bytes(b"mine")
  with pytest.raises(ValueError, match=r"features.npz exists; pass --overwrite"):
    extract.extract(extract.ExtractConfig(workdir=run, layer="pool2", paths=(str(tmp_path),),
                                      output=str(out)))
  assert out.read_bytes() == b"mine"
  extract.extract(extract.ExtractConfig(workdir=run, layer="pool2", paths=(str(tmp_path),),
                                    output=str(out), overwrite=True, progress=False))
  with np.load(out) as z:
    assert z["features"].shape == (1, 16)
