"""The paper's ablation switches (model.ModelConfig) and flags/ablations/*.cfg.

Each switch must change the built graph exactly as intended; each flagfile must parse through
the real training flag parser into flags/paper.cfg's config with exactly its own switch
changed; two of them train one step of the full network.
"""

import dataclasses
import glob
import os

from absl import flags
import keras
import numpy as np
import pytest

from keras_alexnet import config as config_lib
from keras_alexnet import layers as layers_lib
from keras_alexnet import model as model_lib
from keras_alexnet import training
import tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = os.path.join(REPO, "flags", "ablations")

# What each flagfile must change relative to flags/paper.cfg, and nothing else.
EXPECTED = {
    "tanh": {"model.activation": "tanh"},
    "no_lrn": {"model.lrn": False},
    "non_overlapping_pool": {"model.pooling": "non_overlapping"},
    "no_dropout": {"model.dropout": 0.0},
    "no_pca_lighting": {"augment.pca_lighting": False},
    "no_random_crop": {"augment.random_crop": False},
    "no_mirror": {"augment.mirror": False},
    "no_augmentation": {"augment.pca_lighting": False, "augment.random_crop": False,
                        "augment.mirror": False},
    "remove_conv3": {"model.remove": ("conv3",)},
    "remove_conv4": {"model.remove": ("conv4",)},
    "remove_conv5": {"model.remove": ("conv5",)},
}


# ---------------------------------------------------------------------------------------------
# Parameter counts by hand. A conv layer of k x k kernels split over `towers` sees only
# in/towers maps per tower: towers * (k*k * in/towers * out/towers + out/towers).


def conv_params(k, maps_in, maps_out, towers=1):
  return towers * (k * k * (maps_in // towers) * (maps_out // towers) + maps_out // towers)


def dense_params(n_in, n_out):
  return n_in * n_out + n_out


def paper_params_by_layer(num_classes=1000, remove=()):
  """Section 3.5's layers, with `remove`d conv layers gone and the next one's input widened
  or narrowed to what then feeds it."""
  layers = {"conv1": conv_params(11, 3, 96),            # 34,944
            "conv2": conv_params(5, 96, 256, towers=2)}  # 307,456
  maps = 256
  if "conv3" not in remove:
    layers["conv3"] = conv_params(3, maps, 384)          # 885,120
    maps = 384
  if "conv4" not in remove:
    layers["conv4"] = conv_params(3, maps, 384, towers=2)
    maps = 384
  if "conv5" not in remove:
    layers["conv5"] = conv_params(3, maps, 256, towers=2)
    maps = 256
  layers["fc6"] = dense_params(6 * 6 * maps, 4096)
  layers["fc7"] = dense_params(4096, 4096)
  layers["fc8"] = dense_params(4096, num_classes)
  return layers


def test_hand_count_matches_the_paper_total():
  # The derivation above reproduces the known total before it is used for the variants.
  assert sum(paper_params_by_layer().values()) == 60_965_224


# ---------------------------------------------------------------------------------------------
# Model switches.


@pytest.fixture(scope="module")
def switched():
  """One build with the four switches that keep the layer list: tanh, no LRN, 2x2/2 pools,
  dropout 0.3 (each is checked on its own below)."""
  return model_lib.alexnet(num_classes=10, activation="tanh", lrn=False,
                           pooling="non_overlapping", dropout=0.3)


def _weighted(net):
  return [l for l in net.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]


def test_tanh_replaces_relu_everywhere_but_the_output(switched):
  for layer in _weighted(switched):
    expected = keras.activations.linear if layer.name == "fc8" else keras.activations.tanh
    assert layer.activation is expected, layer.name
  # And it acts as tanh: conv1's outputs go negative (ReLU never does) and stay in (-1, 1).
  probe = keras.Model(switched.input, switched.get_layer("conv1").output)
  x = np.random.default_rng(0).normal(0, 100, (1, 224, 224, 3)).astype(np.float32)
  y = probe(x).numpy()
  assert y.min() < -0.1 and np.abs(y).max() <= 1.0


def test_no_lrn_removes_both_lrn_layers(switched):
  assert not [l for l in switched.layers
              if isinstance(l, layers_lib.LocalResponseNormalization)]
  names = {l.name for l in switched.layers}
  assert "lrn1" not in names and "lrn2" not in names
  # pool1 now reads conv1 directly.
  assert switched.get_layer("pool1").input is switched.get_layer("conv1").output


def test_non_overlapping_pools_keep_the_grid(switched):
  # Section 3.4's s = z = 2 baseline: floor((55-2)/2)+1 = 27, floor((27-2)/2)+1 = 13,
  # floor((13-2)/2)+1 = 6, the same grids as 3x3/2, so fc6 keeps its 9216 inputs.
  for name, shape in (("pool1", (27, 27, 96)), ("pool2", (13, 13, 256)),
                      ("pool5", (6, 6, 256))):
    layer = switched.get_layer(name)
    assert tuple(layer.pool_size) == (2, 2) and tuple(layer.strides) == (2, 2), name
    assert tuple(layer.output.shape[1:]) == shape, name
  assert switched.get_layer("fc6").kernel.shape == (9216, 4096)


def test_switches_that_have_no_weights_keep_the_parameter_count(switched):
  assert switched.count_params() == sum(paper_params_by_layer(num_classes=10).values())


def test_dropout_rate(switched):
  rates = {l.name: l.rate for l in switched.layers if isinstance(l, keras.layers.Dropout)}
  assert rates == {"dropout6": 0.3, "dropout7": 0.3}


def test_remove_conv4_and_no_dropout():
  net = model_lib.alexnet(remove=("conv4",), dropout=0.0)
  names = {l.name for l in net.layers}
  assert not {"conv4_a", "conv4_b"} & names
  assert not [l for l in net.layers if isinstance(l, keras.layers.Dropout)]
  # conv5's towers now read conv3's 384 maps, 192 each, as conv4's did.
  assert net.get_layer("conv5_a").kernel.shape == (3, 3, 192, 128)
  assert tuple(net.get_layer("pool5").output.shape[1:]) == (6, 6, 256)
  # 60,965,224 - conv4's 663,936 = 60,301,288.
  expected = sum(paper_params_by_layer(remove=("conv4",)).values())
  assert expected == 60_301_288
  assert net.count_params() == expected
  assert net.output.shape[-1] == 1000


def test_remove_conv5_widens_fc6():
  net = model_lib.alexnet(remove=("conv5",), num_classes=10)
  assert not {"conv5_a", "conv5_b"} & {l.name for l in net.layers}
  # pool5 now pools conv4's 384 maps: fc6 sees 6 * 6 * 384 = 13,824 inputs.
  assert tuple(net.get_layer("pool5").output.shape[1:]) == (6, 6, 384)
  assert net.get_layer("fc6").kernel.shape == (13824, 4096)
  assert net.count_params() == sum(
      paper_params_by_layer(num_classes=10, remove=("conv5",)).values())
  assert net(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 10)


@pytest.mark.parametrize("overrides, named, allowed", [
    ({"remove": ("conv1",)}, "'conv1'", "('conv3', 'conv4', 'conv5')"),
    ({"remove": ("pool2",)}, "'pool2'", "('conv3', 'conv4', 'conv5')"),
    ({"remove": ("conv3", "conv4", "conv5")}, "conv5", "at most two"),
    ({"activation": "tanh", "init": "he"}, "'tanh'", "'relu'"),
    ({"pooling": "average"}, "'average'", "('overlapping', 'non_overlapping')"),
    ({"dropout": 1.0}, "1.0", "[0, 1)"),
])
def test_bad_switches_name_what_was_received_and_allowed(overrides, named, allowed):
  with pytest.raises(ValueError) as e:
    model_lib.alexnet(**overrides)
  assert named in str(e.value) and allowed in str(e.value)


# ---------------------------------------------------------------------------------------------
# Flagfiles.


def _flatten(obj, prefix=""):
  out = {}
  for key, value in obj.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


@pytest.fixture
def parse(monkeypatch, tmp_path):
  """parse(*args) -> config_lib.Config through the training flag parser, from the repo root
  (absl reads nested flagfile paths relative to the working directory)."""
  monkeypatch.chdir(REPO)
  config_lib.define_train_flags()
  f = flags.FLAGS

  def run(*args):
    f.unparse_flags()
    f(["train", *args, f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}"])
    return config_lib.config_from_flags(f)
  yield run
  f.unparse_flags()


def test_every_flagfile_is_checked():
  found = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ABLATIONS, "*.cfg"))}
  assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flagfile_changes_exactly_its_switch(parse, name):
  path = os.path.join(ABLATIONS, f"{name}.cfg")
  with open(path) as f:
    text = f.read()
  # The header states the command and the paper's number (section), then paper.cfg is
  # included first so that everything else is the paper's recipe.
  assert f"--flagfile=flags/ablations/{name}.cfg" in text
  assert "# Reproduces: section" in text
  flag_lines = [l for l in text.splitlines() if l.startswith("--")]
  assert flag_lines[0] == "--flagfile=flags/paper.cfg"
  baseline = _flatten(dataclasses.asdict(parse("--flagfile=flags/paper.cfg")))
  ablation = _flatten(dataclasses.asdict(parse(f"--flagfile=flags/ablations/{name}.cfg")))
  changed = {k: v for k, v in ablation.items() if baseline[k] != v}
  assert changed == EXPECTED[name]


def test_tanh_flagfile_with_a_relu_only_init_fails_before_the_workdir(parse, tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), train=4, validation=2)
  config = parse("--flagfile=flags/ablations/tanh.cfg", "--init=he", "--batch_size=2")
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=data))
  workdir = tmp_path / "tanh_he"
  with pytest.raises(ValueError, match=r"init 'he'") as e:
    training.train_and_evaluate(config, str(workdir))
  assert "received 'tanh'" in str(e.value) and "must be 'relu'" in str(e.value)
  assert not workdir.exists()


def test_removing_conv1_by_flag_fails_before_the_workdir(parse, tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), train=4, validation=2)
  config = parse("--flagfile=flags/paper.cfg", "--remove=conv1", "--batch_size=2")
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=data))
  workdir = tmp_path / "no_conv1"
  allowed = r"remove must be a subset of \('conv3', 'conv4', 'conv5'\)"
  with pytest.raises(ValueError, match=allowed + r".*received \('conv1',\)"):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


# The full network costs tens of seconds per run on a shared 2-core CPU (tracing, the first
# step, a 0.6 GB checkpoint), so one flagfile trains one step: remove_conv5, whose layer list
# and fc6 change the most. The others' configs are checked field by field above.
@pytest.mark.parametrize("name", ["remove_conv5"])
def test_flagfile_trains_one_step(parse, tmp_path, name):
  data = tiny_data.write_dataset(str(tmp_path / "data"), train=4, validation=2)
  config = parse(f"--flagfile=flags/ablations/{name}.cfg", "--batch_size=2", "--epochs=1",
                 "--steps_per_epoch=1", "--eval_steps=1", "--nosummary_images",
                 "--strategy=one_device")
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=data))
  result = training.train_and_evaluate(config, str(tmp_path / name))
  assert result["step"] == 1
  assert np.isfinite(result["validation"]["loss"])
  assert result["validation"]["examples"] == 2
