"""keras_alexnet.experiments: the Figure 1 command, the comparison command, variant costs."""

import json
import os
from absl import flags
import numpy as np
from PIL import Image
import pytest

from keras_alexnet import experiments
from keras_alexnet.experiments import compare
from keras_alexnet.experiments import relu_vs_tanh
import tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))


def write_class_folders(root, per_class=16, seed=0):
  """3 classes told apart by colour, over noise; real PNG and JPEG files of varied sizes, one
  grayscale image and one file that is not an image."""
  rng = np.random.default_rng(seed)
  for label, colour in enumerate(COLOURS):
    folder = root / f"class_{label}"
    folder.mkdir(parents=True)
    for i in range(per_class):
      h, w = 40 + 8 * (i % 3), 48
      image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
      image[8:-8, 8:-8] = colour
      ext = "png" if i % 2 else "jpg"
      Image.fromarray(image).save(folder / f"{i:03d}.{ext}")
  Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / "class_0" / "gray.png")
  (root / "class_1" / "notes.jpg").write_bytes(b"not an image")
  return str(root)


def _png_ok(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.verify()
    return image.size


# ---------------------------------------------------------------------------------------------
# Figure 1.


def test_load_image_dir(tmp_path):
  root = write_class_folders(tmp_path / "images", per_class=4)
  x, y, classes = relu_vs_tanh.load_image_dir(root)
  assert classes == ["class_0", "class_1", "class_2"]
  # 12 drawn + the grayscale one; the unreadable file is skipped.
  assert x.shape == (13, 32, 32, 3) and x.dtype == np.uint8
  assert np.bincount(y).tolist() == [5, 4, 4]
  # Class 2 is blue in the middle: the centre pixel after resizing keeps it.
  centre = x[y == 2][:, 16, 16]
  assert (centre[:, 2] > 150).all() and (centre[:, 0] < 100).all()
  x_cap, y_cap, _ = relu_vs_tanh.load_image_dir(root, max_examples=6)
  assert len(y_cap) == 6 and np.bincount(y_cap).tolist() == [2, 2, 2]   # Balanced cap.


def test_load_tfrecords(tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=4, train=32, validation=4)
  x, y, classes = relu_vs_tanh.load_tfrecords(data)
  assert x.shape == (32, 32, 32, 3) and x.dtype == np.uint8
  assert sorted(set(y.tolist())) == [0, 1, 2, 3] and len(classes) == 4


def test_figure1_net_is_four_layers_with_the_chosen_units():
  import keras  # pylint: disable=g-import-not-at-top
  for activation in ("relu", "tanh"):
    net = relu_vs_tanh.figure1_net(activation, num_classes=10)
    weighted = [l for l in net.layers if l.weights]
    assert [l.name for l in weighted] == ["conv1", "conv2", "conv3", "fc4"]
    for layer in weighted[:3]:
      assert layer.activation is getattr(keras.activations, activation)
    # cuda-convnet layers-18pct widths 32, 32, 64, and 32 -> 16 -> 8 -> 4 grids.
    assert [l.kernel.shape for l in weighted[:3]] == [(5, 5, 3, 32), (5, 5, 32, 32),
                                                      (5, 5, 32, 64)]
    assert tuple(net.get_layer("pool3").output.shape[1:]) == (4, 4, 64)
    assert net.output.shape[-1] == 10


def test_epochs_to_target_and_best_run():
  run = relu_vs_tanh.Run
  fast = run("relu", 0.1, [0.6, 0.3, 0.2, 0.1], 1.0)
  slow = run("relu", 0.01, [0.7, 0.5, 0.25, 0.2], 1.0)
  never = run("relu", 0.001, [0.8, 0.7, 0.6, 0.5], 1.0)
  diverged = run("relu", 1.0, [0.9], 1.0, diverged=True)
  assert fast.epochs_to(0.25) == 3 and slow.epochs_to(0.25) == 3 and never.epochs_to(0.25) is None
  # Same epoch count: the lower error wins; a run that never gets there loses to both.
  assert relu_vs_tanh.best_run([never, slow, fast, diverged], 0.25) is fast
  assert relu_vs_tanh.best_run([never, diverged], 0.25) is never


def test_figure1_on_a_tiny_dataset(tmp_path):
  root = write_class_folders(tmp_path / "images")
  out = tmp_path / "out"
  config = relu_vs_tanh.Figure1Config(image_dir=root, output_dir=str(out), epochs=6,
                                      learning_rates=(0.03,), batch_size=8)
  results = relu_vs_tanh.run_experiment(config)
  for activation in ("relu", "tanh"):
    best = results["best"][activation]
    assert len(best["errors"]) == 6 and all(0 <= e <= 1 for e in best["errors"])
    assert len(results["sweep"][activation]) == 1
    # Colour-coded classes are easy: both units get below 25% training error.
    assert best["epochs_to_target"] is not None
    assert best["errors"][best["epochs_to_target"] - 1] <= 0.25
    assert best["errors"][-1] < best["errors"][0]
  assert results["ratio_tanh_over_relu"] == pytest.approx(
      results["best"]["tanh"]["epochs_to_target"] / results["best"]["relu"]["epochs_to_target"])
  assert "not CIFAR-10" in results["data"] and "49 images of 3 classes" in results["data"]
  width, height = _png_ok(out / "figure1.png")
  assert width > 300 and height > 200
  with open(out / "figure1.json") as f:
    assert json.load(f)["best"] == results["best"]
  text = relu_vs_tanh.report(results)
  assert "Ratio tanh / ReLU" in text and "not CIFAR-10" in text
  assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


@pytest.mark.parametrize("overrides, message", [
    ({"image_dir": "/nonexistent/images"}, "--image_dir must be an existing folder"),
    ({"learning_rates": (0.1, -1.0)}, "--learning_rates must be a non-empty list of rates > 0"),
    ({"target_error": 25.0}, "--target_error must be a fraction in (0, 1); received 25.0"),
    ({"epochs": 0}, "--epochs must be an integer >= 1; received 0"),
    ({"image_dir": "/tmp", "data_dir": "/tmp"}, "at most one of them (neither: the demo data"),
])
def test_figure1_bad_settings(tmp_path, overrides, message):
  config = relu_vs_tanh.Figure1Config(output_dir=str(tmp_path / "out"), **overrides)
  with pytest.raises(ValueError) as e:
    relu_vs_tanh.check_config(config)
  assert message in str(e.value)
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Comparison.


def test_compare_two_flagfiles(tmp_path, monkeypatch, capsys):
  # In this process (each run is still its own `python -m keras_alexnet.train`), through the
  # command's main() so that the flags reach the runs as a user would pass them.
  monkeypatch.chdir(REPO)
  data = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=4, train=16, validation=8)
  a, b = tmp_path / "mirror.cfg", tmp_path / "no_mirror.cfg"
  a.write_text("--flagfile=flags/smoke.cfg\n")
  b.write_text("--flagfile=flags/smoke.cfg\n--nomirror\n")
  out = tmp_path / "out"
  values = flags.FlagValues()
  compare.define_flags(values)
  monkeypatch.setattr(compare, "FLAGS", values)
  values(["compare", f"--flagfiles={a},{b}", f"--data_dir={data}", f"--output_dir={out}",
          "--seed=3", "--train_flags=--epochs=2 --steps_per_epoch=1 --eval_steps=1 "
          "--nosummary_images"])
  compare.main(["compare"])
  stdout = capsys.readouterr().out
  with open(out / "comparison.json") as f:
    summary = json.load(f)
  assert [r["name"] for r in summary["runs"]] == ["mirror", "no_mirror"]
  for run in summary["runs"]:
    assert [e["epoch"] for e in run["epochs"]] == [1, 2]
    assert 0 <= run["top1_error"] <= 1 and 0 <= run["top5_error"] <= 1
    assert run["seconds"] > 0 and run["params"] > 0 and run["flops_per_image"] > 0
    # The same seed reached every run, and each ran its own flagfile.
    with open(os.path.join(run["workdir"], "flags.txt")) as f:
      flags_used = f.read()
    assert "--seed=3" in flags_used
    assert ("--nomirror" in flags_used) == (run["name"] == "no_mirror")
  table = (out / "comparison.md").read_text()
  assert table.count("\n| mirror |") == 1 and table.count("\n| no_mirror |") == 1
  assert "| mirror |" in stdout and "comparison.png" in stdout
  _png_ok(out / "comparison.png")
  assert (out / "logs" / "no_mirror.log").exists()


def test_compare_reports_a_failed_run(tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=4, train=8, validation=4)
  a, b = tmp_path / "a.cfg", tmp_path / "b.cfg"
  a.write_text("--flagfile=flags/smoke.cfg\n--activation=sigmoid\n")
  b.write_text("--flagfile=flags/smoke.cfg\n")
  config = compare.CompareConfig(flagfiles=(str(a), str(b)), data_dir=data,
                                 output_dir=str(tmp_path / "out"), plot=False)
  with pytest.raises(RuntimeError, match=r"(?s)Training a \(.*a\.cfg\) failed.*sigmoid"):
    compare.compare(config)
  # It stopped at the failure: b never ran, and no table claims a result.
  assert not (tmp_path / "out" / "b").exists()
  assert not (tmp_path / "out" / "comparison.md").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"flagfiles": ("flags/smoke.cfg",)}, "at least two flagfiles"),
    ({"flagfiles": ("flags/smoke.cfg", "flags/nope.cfg")}, "'flags/nope.cfg' is neither a file"),
    ({"flagfiles": ("flags/smoke.cfg", "x/smoke.cfg")}, "'x/smoke.cfg' is neither a file"),
    ({"names": ("a", "a")}, "Two runs would share a workdir"),
    ({"names": ("a",)}, "one name per flagfile (2)"),
    ({"train_flags": ("--seed=1",)}, "must not set ['--seed=1']"),
])
def test_compare_bad_settings(tmp_path, monkeypatch, overrides, message):
  monkeypatch.chdir(REPO)
  (tmp_path / "data").mkdir()
  fields = {"flagfiles": ("flags/smoke.cfg", "flags/paper.cfg"),
            "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
            "plot": False, **overrides}
  with pytest.raises(ValueError) as e:
    compare.compare(compare.CompareConfig(**fields))
  assert message in str(e.value)
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Costs.


def test_variant_costs():
  rows = experiments.variant_costs(["paper", "remove_conv3"])
  paper, no_conv3 = rows
  assert paper == ("paper", 60_965_224, paper.flops_per_image)
  # Without conv3: its 3*3*256*384 + 384 parameters go, and conv4's towers read 128 maps
  # each instead of 192: 2 * 3*3*64*192 fewer.
  assert no_conv3.params == 60_965_224 - (3 * 3 * 256 * 384 + 384) - 2 * 3 * 3 * 64 * 192
  # FLOPs: 2 per multiply-add at each of conv3's 13*13*384 outputs (3*3*256 each), and at
  # each of conv4's 13*13*384 outputs 3*3*64 fewer.
  assert paper.flops_per_image - no_conv3.flops_per_image == (
      2 * 13 * 13 * 384 * 3 * 3 * (256 + 64))
  table = experiments.format_costs(rows)
  assert "remove_conv3" in table and "59,858,920" in table and "-25.8%" in table
  with pytest.raises(ValueError, match=r"Unknown variant\(s\) \['conv9'\]"):
    experiments.variant_costs(["conv9"])


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_peak_host_memory_grows_with_an_allocation():
  before = experiments.peak_host_memory_bytes()
  with open("/proc/self/statm") as f:
    resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  # Touched (np.ones), so resident: 256 MiB beyond the old peak.
  block = np.ones((before - resident + (256 << 20)) // 8)
  after = experiments.peak_host_memory_bytes()
  assert after - before >= 200 << 20
  del block
