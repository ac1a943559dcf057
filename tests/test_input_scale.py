"""The input pipeline at accelerator scale: raw (decode-free) shards against JPEG shards of
the same images, decode-and-crop, the one validation iterator, and the PIL comparator of the
benchmark. Real photos-like JPEGs, real TFRecords written by tfrecords.build, real processes.
Speed is not timed here (targets live in the benchmark command)."""

import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from keras_alexnet import data_sources
from keras_alexnet import dataset
from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import features
from keras_alexnet import files
from keras_alexnet import pil_loader
from keras_alexnet import pipeline_benchmark as pb
from keras_alexnet import preprocessing
from keras_alexnet import training
from tfrecords import build
from tfrecords import image as image_lib
import tiny_data  # tests/tiny_data.py

CLASSES = ("cat", "dog")


def _sources(root, per_class=6):
  """Class folders of photo-like JPEGs of several sizes; {relative name: bytes}."""
  files = {}
  for split in ("train", "val"):
    for k, c in enumerate(CLASSES):
      for i in range(per_class if split == "train" else 3):
        picture = tiny_data.photo(240 + 20 * i, 300 - 10 * i, seed=100 * k + i + len(files))
        name = os.path.join(split, c, f"{i}.jpg")
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        Image.fromarray(picture).save(os.path.join(root, name), quality=90)
        files[name] = open(os.path.join(root, name), "rb").read()
  return files


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
  """The same images built twice by tfrecords.build: --encoding=jpeg and --encoding=raw."""
  root = tmp_path_factory.mktemp("scale")
  files = _sources(str(root / "in"))
  out = {}
  for encoding in ("jpeg", "raw"):
    out[encoding] = str(root / encoding)
    build.build(build.BuildConfig(input=str(root / "in"), output_dir=out[encoding],
                                  train_shards=3, validation_shards=2, num_workers=1,
                                  progress=False, encoding=encoding))
  # What the builder stored for each file name: the resized pixels and their JPEG.
  expected = {}
  for name, data in files.items():
    converted = image_lib.convert(data, 256, build.DEFAULT_JPEG_QUALITY)
    expected[name] = converted
  return dict(out=out, expected=expected)


def _batches(config, train, batch_size, **kwargs):
  return [(x.numpy(), y.numpy()) for x, y in dataset.create_split(config, train, batch_size,
                                                                   **kwargs)]


def test_builder_records_the_encoding(builds):
  raw = dataset_info.read(builds["out"]["raw"])
  jpeg = dataset_info.read(builds["out"]["jpeg"])
  assert raw["encoding"] == "raw" and jpeg["encoding"] == "jpeg"
  # The same splits, but for the shards' sizes in bytes (raw records are ~8x larger).
  def without_bytes(info):
    return {k: {f: v for f, v in meta.items() if f != "shard_bytes"}
            for k, meta in info["splits"].items()}
  assert without_bytes(raw) == without_bytes(jpeg) and raw["mean_rgb"] == jpeg["mean_rgb"]
  assert all(sum(raw["splits"][k]["shard_bytes"]) > 3 * sum(jpeg["splits"][k]["shard_bytes"])
             for k in raw["splits"])
  assert build.verify(builds["out"]["raw"], workers=1, progress=False) == []
  record = next(iter(tf.data.TFRecordDataset(data_sources.list_shards(builds["out"]["raw"],
                                                                 "train"))))
  parsed = tf.train.Example.FromString(record.numpy()).features.feature
  assert sorted(parsed) == sorted(features.FEATURE_SPEC)     # the same keys
  assert len(parsed[features.ENCODED].bytes_list.value[0]) == 256 * 256 * 3
  assert parsed[features.FORMAT].bytes_list.value[0] == b"RAW"
  raw_config = data_sources.DataConfig(builds["out"]["raw"])
  assert data_sources.dataset_metadata(raw_config)["encoding"] == "raw"


@pytest.mark.parametrize("train", [True, False])
def test_raw_and_jpeg_give_the_same_batches_and_resume(builds, train):
  """Raw batches are the builder's pixels exactly; JPEG batches are their JPEGs decoded
  exactly, so within JPEG error of raw; same order; exact mid-epoch resume for both."""
  batches = {}
  for encoding, data_dir in builds["out"].items():
    config = data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=4, seed=5)
    batches[encoding] = _batches(config, train, 4, epoch=1)
    resumed = _batches(config, train, 4, epoch=1, skip_batches=1)
    assert len(resumed) == len(batches[encoding]) - 1
    for (x, y), (rx, ry) in zip(batches[encoding][1:], resumed):
      np.testing.assert_array_equal(rx, x)
      np.testing.assert_array_equal(ry, y)
  assert len(batches["raw"]) == len(batches["jpeg"]) == (3 if train else 2)
  # The same images in the same order: identify each raw image by the builder's pixels.
  digest = lambda pixels: hashlib.sha256(pixels.tobytes()).hexdigest()
  by_pixels = {digest(c.pixels): c for c in builds["expected"].values()}
  for (rx, ry), (jx, jy) in zip(batches["raw"], batches["jpeg"]):
    np.testing.assert_array_equal(ry, jy)
    for raw_image, jpeg_image in zip(rx, jx):
      assert digest(raw_image) in by_pixels, "a raw image is not the builder's pixels"
      converted = by_pixels[digest(raw_image)]
      np.testing.assert_array_equal(jpeg_image, tf.io.decode_jpeg(converted.encoded).numpy())
      error = np.abs(jpeg_image.astype(int) - raw_image.astype(int))
      assert error.mean() < 3 and error.max() <= 40     # q95 JPEG of a photo-like image


def test_raw_cache_gives_the_uncached_images(builds):
  config = data_sources.DataConfig(builds["out"]["raw"], deterministic=True, shuffle_buffer=4)
  cached = dataclasses.replace(config, cache=True)
  digest = lambda batches: sorted(hashlib.sha256(image.tobytes()).hexdigest() + str(label)
                                  for x, y in batches for image, label in zip(x, y))
  for train in (True, False):   # train: the cached epoch is shuffled from another file order
    assert digest(_batches(cached, train, 4)) == digest(_batches(config, train, 4))
  for (x, y), (cx, cy) in zip(_batches(config, False, 4), _batches(cached, False, 4)):
    np.testing.assert_array_equal(cx, x)
    np.testing.assert_array_equal(cy, y)


def test_corrupted_raw_shard_is_named(builds, tmp_path):
  data_dir = str(tmp_path / "raw")
  os.makedirs(data_dir)
  for name in os.listdir(builds["out"]["raw"]):
    if not os.path.isdir(os.path.join(builds["out"]["raw"], name)):
      with open(os.path.join(builds["out"]["raw"], name), "rb") as f:
        data = f.read()
      with open(os.path.join(data_dir, name), "wb") as f:
        f.write(data)
  bad = os.path.join(data_dir, features.shard_name("train", 1, 3))
  data = bytearray(open(bad, "rb").read())
  data[12 + 5000] ^= 0xFF          # inside the first record's data: its CRC fails
  open(bad, "wb").write(bytes(data))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="Corrupted or truncated.*train-00001-of-00003"):
    _batches(data_sources.DataConfig(data_dir), True, 2)


def _raw_shards(data_dir, sizes):
  """One raw train shard whose records hold `sizes` bytes each, and its dataset_info.json."""
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, features.shard_name("train", 0, 1))
  with tf.io.TFRecordWriter(path) as writer:
    for i, size in enumerate(sizes):
      writer.write(features.make_example(
          bytes(size), label=0, synset="n0", text="", filename=f"img{i}.JPEG", height=256,
          width=256, image_format=features.FORMAT_RAW))
  files.write_json(os.path.join(data_dir, dataset_info.FILENAME), {
      "format": "keras_alexnet", "label_offset": 0, "image_size": 256, "num_classes": 2,
      "encoding": "raw", "splits": {"train": {"num_examples": len(sizes)}}})
  return path


def test_raw_record_of_the_wrong_size_is_named(tmp_path):
  _raw_shards(str(tmp_path), [decoding.RAW_BYTES, decoding.RAW_BYTES - 3, decoding.RAW_BYTES])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"not 256x256x3 uint8 \(196608 bytes\).*train-00000-of-00001.*"
                           r"img1.JPEG.*196605"):
    _batches(data_sources.DataConfig(str(tmp_path)), True, 3)


def test_dataset_info_that_disagrees_with_the_shards(builds, tmp_path):
  raw_dir = str(tmp_path / "raw")
  _raw_shards(raw_dir, [decoding.RAW_BYTES] * 2)
  info = dataset_info.read(raw_dir)
  files.write_json(os.path.join(raw_dir, dataset_info.FILENAME),
                                 dict(info, encoding="jpeg"))
  with pytest.raises(ValueError, match=r"dataset_info.json says encoding 'jpeg', but "
                                       r".*train-00000-of-00001 holds image/format 'RAW'"):
    dataset.create_split(data_sources.DataConfig(raw_dir), True, 2)
  jpeg_dir = str(tmp_path / "jpeg")
  data = pb.write_records(jpeg_dir, 4, num_shards=1)
  files.write_json(os.path.join(data, dataset_info.FILENAME),
                                 dict(dataset_info.read(data), encoding="raw"))
  with pytest.raises(ValueError, match="says encoding 'raw', but .* holds image/format 'JPEG'"):
    data_sources.dataset_metadata(data_sources.DataConfig(jpeg_dir))
  files.write_json(os.path.join(data, dataset_info.FILENAME),
                                 dict(dataset_info.read(data), encoding="png"))
  with pytest.raises(ValueError, match=r"encoding 'png'; allowed: \['jpeg', 'raw'\]"):
    data_sources.dataset_metadata(data_sources.DataConfig(jpeg_dir))


@pytest.mark.parametrize("flags,message", [
    (["--encoding=raw", "--resize=none"], "--encoding=raw needs --resize=N"),
    (["--encoding=png"], "--encoding=png must be one of jpeg, raw"),
])
def test_builder_refuses_bad_encoding_before_any_work(tmp_path, flags, message):
  out = tmp_path / "out"
  run = subprocess.run([sys.executable, "-m", "tfrecords.build", "--noprogress",
                        f"--input={tmp_path}", f"--output_dir={out}", *flags],
                       capture_output=True, text=True, timeout=120, env=tiny_data.child_env())
  assert run.returncode != 0 and message in run.stderr
  assert not out.exists()


def test_decode_crop_is_the_window_augment_takes(tmp_path):
  data_dir = pb.write_records(str(tmp_path), 12, num_shards=3)
  config = data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=5, seed=2)
  full = _batches(config, True, 4, epoch=3)
  cropped = [[t.numpy() for t in batch] for batch in dataset.create_split(
      data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=5, seed=2,
                         decode_crop=True), True, 4, epoch=3)]
  resumed = [[t.numpy() for t in batch] for batch in dataset.create_split(
      data_sources.DataConfig(data_dir, deterministic=True, shuffle_buffer=5, seed=2,
                         decode_crop=True), True, 4, epoch=3, skip_batches=2)]
  assert len(cropped) == len(full) == 3
  offsets_seen = set()
  for (images, labels), (crops, crop_labels, offsets) in zip(full, cropped):
    np.testing.assert_array_equal(crop_labels, labels)
    assert crops.shape == (4, 224, 224, 3) and offsets.shape == (4, 2)
    assert offsets.min() >= 0 and offsets.max() <= decoding.MAX_OFFSET
    for image, crop, (y, x) in zip(images, crops, offsets):
      np.testing.assert_array_equal(crop, image[y:y + 224, x:x + 224])
      offsets_seen.add((int(y), int(x)))
  assert len(offsets_seen) > 1
  for got, want in zip(resumed, cropped[2:]):
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)

  # In the step: augment_crops of the windows at augment's offsets is augment, exactly.
  images = np.concatenate([x for x, _ in full])
  stats = dataset_info.imagenet_statistics()
  stats = dataset_info.Statistics(
      mean_image=np.random.default_rng(0).uniform(0, 255, (256, 256, 3)).astype(np.float32),
      mean_rgb=stats.mean_rgb, eigenvalues=stats.eigenvalues, eigenvectors=stats.eigenvectors)
  seed = tf.constant([7, 11], tf.int64)
  offsets = preprocessing.augment_offsets(len(images), seed=seed).numpy()
  windows = np.stack([i[y:y + 224, x:x + 224] for i, (y, x) in zip(images, offsets)])
  np.testing.assert_array_equal(
      preprocessing.augment_crops(windows, offsets, stats, seed=seed).numpy(),
      preprocessing.augment(images, stats, seed=seed).numpy())


def test_validation_iterator_is_made_once(tmp_path, monkeypatch):
  data_dir = tiny_data.write_dataset(str(tmp_path), train=8, validation=10)
  made = []
  create_split = dataset.create_split
  monkeypatch.setattr(dataset, "create_split",
                      lambda *a, **k: made.append(k.get("train", a[1] if len(a) > 1 else None))
                      or create_split(*a, **k))
  strategy = tf.distribute.get_strategy()
  config = data_sources.DataConfig(data_dir)
  reference = [y.numpy().tolist() for _, y in create_split(config, False, 4)]
  for steps, want in ((0, reference), (2, reference[:2])):
    made.clear()
    batches = training.validation_batches(strategy, config, 4, steps, 10, distributed=False)
    passes = [[y.numpy().tolist() for _, y in batches()] for _ in range(3)]
    assert passes == [want] * 3 and made == [False]
  # A wrong example count fails loudly instead of shifting the next passes.
  batches = training.validation_batches(strategy, config, 4, 0, 14, distributed=False)
  with pytest.raises(tf.errors.FailedPreconditionError):
    list(batches())


def test_pil_loader_does_the_work_it_is_timed_for(tmp_path):
  rng = np.random.default_rng(0)
  images = pb._natural_images(rng, 6)
  jpegs = [tf.io.encode_jpeg(i, quality=95).numpy() for i in images]
  paths = pil_loader.write_files(jpegs, str(tmp_path / "files"))
  with pil_loader.PilLoader(2, 3) as loader:
    wall, cpu, count, batch = loader.run(paths)
  assert count == 6 and wall > 0 and cpu > 0
  # The last batch is PIL's decode of the last three files (not made up).
  want = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[3:]])
  np.testing.assert_array_equal(batch, want)


def test_dataloader_comparator_does_the_work_it_is_timed_for(tmp_path):
  pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  jpegs = [tf.io.encode_jpeg(i, quality=95).numpy() for i in pb._natural_images(rng, 6)]
  paths = pil_loader.write_files(jpegs, str(tmp_path / "files"))
  wall, cpu, count, batch, indices = pil_loader.dataloader_pass(paths, 2, 3)
  assert count == 6 and wall > 0 and cpu > 0
  # The last batch is PIL's decode of the files it names, three of the six (shuffled).
  assert len(set(indices.tolist())) == 3 and set(indices.tolist()) <= set(range(6))
  want = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in indices])
  np.testing.assert_array_equal(batch, want)


def test_comparator_figures_are_measured(tmp_path):
  data_dir = pb.write_records(str(tmp_path / "jpeg"), 16, num_shards=2)
  raw_dir = pb.write_records(str(tmp_path / "raw"), 0, encoding="raw",
                             jpegs=pb.shard_jpegs(data_dir))
  figures = pb.cpu_figures(data_sources.DataConfig(data_dir, shuffle_buffer=4), 4, repeats=2,
                           raw_dir=raw_dir, pil_workers=1, torch_workers=1, options=True)
  assert set(figures.passes) == {"bound", "jpeg", "raw", "pil", "jpeg_decode_crop",
                                 "jpeg_integer_accurate"} | (
                                     {"torch"} if pil_loader.torch_available() else set())
  for name, f in figures.passes.items():
    assert np.isfinite(f["rate"]) and f["rate"] > 0 and f["per_core"] > 0, name
  assert figures.cold["rate"] > 0
  ratio = figures.ratios["jpeg/pil"]
  assert 0 < ratio["per_core"] < 100 and 0 < ratio["rate"] < 100
  # Paired ratios come from the same rounds: a/b and b/a are reciprocal medians of 2 rounds.
  np.testing.assert_allclose(figures.ratios["pil/jpeg"]["rate"] * ratio["rate"], 1, rtol=0.5)
