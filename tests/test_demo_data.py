"""Tests of keras_alexnet.demo_data: determinism, the ILSVRC extracted layout the builder
accepts, the odd files, and that a dataset folder is whole or absent."""

import filecmp
import os

import numpy as np
from PIL import Image
import pytest

from keras_alexnet import demo_data
from tfrecords import sources

TINY = demo_data.DemoDataConfig(train_per_class=3, validation_per_class=2, heldout_per_class=1,
                                num_classes=3, min_size=256, max_size=300)


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, _, names in os.walk(root) for n in names)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(manifest, folder) of the TINY dataset, generated once for the module."""
  root = str(tmp_path_factory.mktemp("tiny") / "data")
  return demo_data.generate(root, TINY), root


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tiny, tmp_path):
  _, first = tiny                       # one worker per core
  second = str(tmp_path / "data")
  demo_data.generate(second, TINY, num_workers=1)
  names = _files(first)
  assert names == _files(second)
  match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
  assert (mismatch, errors) == ([], [])
  assert len(match) == len(names)


def test_another_seed_gives_other_images(tiny, tmp_path):
  _, first = tiny
  other = str(tmp_path / "data")
  demo_data.generate(other, TINY.__class__(**{**TINY.__dict__, "seed": 1}))
  name = "train/n00000003/n00000003_00002.JPEG"
  with open(os.path.join(first, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
    assert a.read() != b.read()


def test_layout_is_ilsvrc_extracted(tiny):
  manifest, root = tiny
  wnids = [c[0] for c in demo_data.CLASSES[:3]]
  assert sorted(os.listdir(os.path.join(root, "train"))) == wnids
  for wnid in wnids:
    names = sorted(os.listdir(os.path.join(root, "train", wnid)))
    assert names == [f"{wnid}_{i:05d}.JPEG" for i in (1, 2, 3)]
  val = sorted(os.listdir(os.path.join(root, "val")))
  assert val == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
  with open(os.path.join(root, demo_data.VALIDATION_LABELS_FILE)) as f:
    labels = [line.split() for line in f]
  assert [name for name, _ in labels] == val
  assert sorted(w for _, w in labels) == sorted(wnids * 2)   # balanced
  with open(os.path.join(root, demo_data.CLASSES_FILE)) as f:
    assert f.read() == "n00000001\tdisc\nn00000002\tsquare\nn00000003\ttriangle\n"
  assert sorted(os.listdir(os.path.join(root, demo_data.HELDOUT))) == [
      "disc_1.JPEG", "square_1.JPEG", "triangle_1.JPEG"]
  assert manifest["num_files"] == {"train": 9, "validation": 6, "heldout": 3}
  for name in _files(root):
    if name.endswith(".JPEG"):
      with Image.open(os.path.join(root, name)) as image:
        assert min(image.size) >= 256 and max(image.size) <= 300, name


def test_odd_files_are_what_imagenet_has(tiny):
  manifest, root = tiny
  found = {}
  for name in _files(root):
    if name.endswith(".JPEG"):
      with Image.open(os.path.join(root, name)) as image:
        if (image.format, image.mode) != ("JPEG", "RGB"):
          found[name] = (image.format, image.mode)
  assert found == {"train/n00000001/n00000001_00001.JPEG": ("JPEG", "CMYK"),
                   "train/n00000002/n00000002_00001.JPEG": ("PNG", "RGB"),
                   "val/ILSVRC2012_val_00000001.JPEG": ("JPEG", "L")}
  assert set(manifest["odd_files"]) == set(found)


def test_the_builder_reads_it_with_the_right_labels(tiny):
  _, root = tiny
  source = sources.find_source(
      root, classes_file=os.path.join(root, demo_data.CLASSES_FILE),
      validation_labels_file=os.path.join(root, demo_data.VALIDATION_LABELS_FILE))
  assert source.layout == "ilsvrc_folders"
  assert source.classes == (("n00000001", "disc"), ("n00000002", "square"),
                            ("n00000003", "triangle"))
  assert [(i.filename[:9], i.label) for i in source.splits["train"]] == [
      (f"n0000000{k + 1}", k) for k in range(3) for _ in range(3)]
  with open(os.path.join(root, demo_data.VALIDATION_LABELS_FILE)) as f:
    truth = dict(line.split() for line in f)
  assert {i.filename: source.classes[i.label][0] for i in source.splits["validation"]} == truth


@pytest.mark.parametrize("kind,area", [
    ("disc", np.pi), ("ring", np.pi * (1 - 0.6 ** 2)), ("square", 2.0),
    ("triangle", 3 * np.sqrt(3) / 4), ("star", 5 * 0.42 * np.sin(np.pi / 5)),
    ("cross", 4 * 0.36 - 0.36 ** 2)])
def test_each_class_draws_its_own_shape(kind, area):
  """The mask of each shape has the shape's area (in units of r^2, from its geometry) and a
  ring leaves its centre uncovered: the label is in the pixels."""
  r = 80
  mask = demo_data._mask(kind, 256, 256, 128, 128, r, 0.3)
  assert mask.sum() / r ** 2 == pytest.approx(area, rel=0.02)
  assert mask[128, 128] == (0 if kind == "ring" else 1)


def test_images_of_different_classes_differ_where_the_shape_is():
  images = [np.asarray(demo_data.draw(k, np.random.default_rng(7)), np.int32)
            for k in range(len(demo_data.CLASSES))]
  for a in range(len(images)):
    for b in range(a + 1, len(images)):
      # Same background and colours (same seed stream), different shape.
      changed = np.mean(np.any(images[a] != images[b], axis=-1))
      assert changed > 0.01, (demo_data.CLASSES[a], demo_data.CLASSES[b])


def _hue_degrees(rgb):
  import colorsys
  return 360 * colorsys.rgb_to_hsv(*(np.asarray(rgb, np.float64) / 255))[0]


@pytest.mark.parametrize("label", range(len(demo_data.CLASSES)))
def test_each_class_paints_in_its_own_hue_over_greyish_backgrounds(label):
  """Colour is the second cue (with shape): every class's paint lies in its hue band, far from
  the other classes' bands, and backgrounds are nearly grey."""
  for i in range(20):
    colour = demo_data._class_colour(np.random.default_rng([label, i]), label)
    offset = (_hue_degrees(colour) - demo_data.CLASS_HUES[label] + 180) % 360 - 180
    assert abs(offset) <= demo_data.HUE_JITTER + 0.5, (colour, offset)
    saturation = (colour.max() - colour.min()) / max(colour.max(), 1)
    assert saturation >= 0.59, colour
    # Even the most saturated colour mixed towards grey stays below every class colour.
    grey = demo_data._greyish(np.random.default_rng(i).integers(0, 256, 3).astype(np.float32))
    assert (grey.max() - grey.min()) / max(grey.max(), 1) < 0.55, grey
  red = demo_data._greyish(np.array([255.0, 0.0, 0.0], np.float32))
  assert (red.max() - red.min()) / red.max() < 0.55, red
  hues = sorted(demo_data.CLASS_HUES)
  gaps = [(b - a) % 360 for a, b in zip(hues, hues[1:] + hues[:1])]
  assert min(gaps) - 2 * demo_data.HUE_JITTER >= 30, gaps


def test_a_finished_dataset_is_reused_untouched(tiny):
  manifest, root = tiny
  path = os.path.join(root, demo_data.MANIFEST)
  before = os.stat(path).st_mtime_ns
  assert demo_data.generate(root, TINY) == manifest
  assert os.stat(path).st_mtime_ns == before
  assert demo_data.is_complete(root, TINY)
  assert not demo_data.is_complete(root, TINY.__class__(**{**TINY.__dict__, "seed": 5}))


def test_a_folder_that_is_not_this_dataset_is_refused(tiny, tmp_path):
  manifest, root = tiny
  other = tmp_path / "mine"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  with pytest.raises(ValueError, match="not the complete demo dataset"):
    demo_data.generate(str(other), TINY)
  assert os.listdir(other) == ["notes.txt"]
  with pytest.raises(ValueError, match="not the complete demo dataset"):
    demo_data.generate(root, TINY.__class__(**{**TINY.__dict__, "seed": 3}))
  assert demo_data.read_manifest(root) == manifest


def test_an_interrupted_run_leaves_nothing_and_the_next_starts_cleanly(tmp_path):
  target = str(tmp_path / "data")

  def interrupt(done, total):
    raise KeyboardInterrupt
  config = TINY.__class__(**{**TINY.__dict__, "train_per_class": 20})
  with pytest.raises(KeyboardInterrupt):
    demo_data.generate(target, config, progress=interrupt)
  assert os.listdir(tmp_path) == []
  # A killed process (no cleanup) leaves its temporary folder: the next run removes it.
  (tmp_path / ".tmp-data-12345" / "train").mkdir(parents=True)
  demo_data.generate(target, TINY)
  assert os.listdir(tmp_path) == ["data"]
  assert demo_data.is_complete(target, TINY)


@pytest.mark.parametrize("field,value,message", [
    ("num_classes", 7, "num_classes must be in 2..6"),
    ("train_per_class", 1, "train_per_class must be >= 2"),
    ("validation_per_class", 0, "validation_per_class must be >= 1"),
    ("min_size", 400, "min_size <= max_size"),
])
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, field, value, message):
  with pytest.raises(ValueError, match=message):
    demo_data.generate(str(tmp_path / "data"), TINY.__class__(**{**TINY.__dict__,
                                                                  field: value}))
  assert os.listdir(tmp_path) == []
