"""tfrecords.build's --train_shards/--validation_shards=auto: ImageNet's counts computed (not
built), real builds of small class-folder datasets of real JPEGs (84 photographs through the
command's defaults, a dataset just above the writer count), resume, and the empty split."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from keras_alexnet import dataset_info
from tfrecords import build
from tfrecords import sources
import tiny_data  # tests/tiny_data.py

MiB = 1 << 20


def _photos(root, per_split, classes=("cat", "dog", "fish"), size=(320, 240), seed=0) -> str:
  """root/<split>/<class>/<i>.jpg real JPEGs; per_split: {"train": N, "val": M} per class."""
  for split, count in per_split.items():
    for k, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        array = tiny_data.photo(size[1], size[0], seed=seed + 1000 * k + i)
        Image.fromarray(array).save(os.path.join(folder, f"{i}.jpg"), quality=90)
  return str(root)


def _config(input_path, output_dir, **kwargs) -> build.BuildConfig:
  kwargs.setdefault("num_workers", 1)
  kwargs.setdefault("progress", False)
  return build.BuildConfig(input=str(input_path), output_dir=str(output_dir), **kwargs)


def test_imagenet_gets_the_model_gardens_counts_and_others_are_sized_by_bytes():
  # ILSVRC-2012 as released, and without the 1,762 blacklisted validation images.
  assert build.auto_num_shards("train", 1_281_167, None, 8)[0] == 1024
  assert build.auto_num_shards("validation", 50_000, None, 8)[0] == 128
  assert build.auto_num_shards("validation", 50_000 - 1_762, None, 64)[0] == 128
  # An ImageNet-100-sized subset, resized to 256: ~126,000 images x 49,152 bytes (0.75 byte
  # a pixel) = 6.19e9 bytes = 5,906 MiB -> 47 shards of at most 128 MiB.
  shards, why = build.auto_num_shards("train", 126_000, int(126_000 * 0.75 * 256 * 256), 8)
  assert shards == 47 and "128 MiB" in why
  # ImageNet-21k-sized: bytes, not 1024 shards of 400 MB.
  assert build.auto_num_shards("train", 14_000_000, 14_000_000 * 49_152, 8)[0] == 5127
  # Small data: at least one shard per writer (workers x hosts), never more than the images.
  assert build.auto_num_shards("train", 72, 3 * MiB, 2)[0] == 2
  assert build.auto_num_shards("train", 5, MiB, 8)[0] == 5
  assert build.auto_num_shards("train", 1000, 300 * MiB, 1)[0] == 3
  # Exactly at the target: one shard; one byte more: two.
  assert build.auto_num_shards("train", 100, 128 * MiB, 1)[0] == 1
  assert build.auto_num_shards("train", 100, 128 * MiB + 1, 1)[0] == 2


def test_the_builders_defaults_convert_84_photographs(tmp_path):
  """The README's class-folder example with the command's defaults: 3 classes x (24 train + 4
  validation) = 84 photographs."""
  photos = _photos(tmp_path / "photos", {"train": 24, "val": 4})
  out = tmp_path / "records"
  run = subprocess.run([sys.executable, "-m", "tfrecords.build", f"--input={photos}",
                        f"--output_dir={out}", "--verify"], capture_output=True, text=True,
                       timeout=300, env=tiny_data.child_env())
  assert run.returncode == 0, run.stderr[-3000:]
  info = dataset_info.read(str(out))
  # The child used one worker per core; the writers it had decide the floor.
  writers = len(os.sched_getaffinity(0))
  for split, images in (("train", 72), ("validation", 12)):
    assert info["splits"][split]["num_examples"] == images
    expected = min(writers, images)   # 3 MB of photographs: one shard by bytes
    assert info["splits"][split]["num_shards"] == expected
    choice = info["shards"][split]
    assert choice["flag"] == "auto" and choice["num_shards"] == expected
    assert f"{images} images" in choice["why"] and "MB (estimated)" in choice["why"]
    # The builder says what it chose, and why.
    assert f"{split}: {expected} shards (auto: {images} images" in run.stderr
  assert "every shard of" in run.stderr   # --verify


def test_a_dataset_just_above_the_writer_count(tmp_path):
  """3 writers (hosts here: each host's command is the same, so their counts agree) and 4
  training images: 3 shards; 2 validation images: 2 shards, no more than the images."""
  photos = _photos(tmp_path / "in", {"train": 2, "val": 1}, classes=("a", "b"))
  out = tmp_path / "out"
  results = [build.build(_config(photos, out, num_hosts=3, host_index=h)) for h in range(3)]
  assert results[:2] == [None, None]   # the last host to finish writes dataset_info.json
  info = results[2]
  assert {s: m["num_shards"] for s, m in info["splits"].items()} == {"train": 3,
                                                                    "validation": 2}
  assert "raised to 3 for the 3 writers" in info["shards"]["train"]["why"]
  assert "raised to 2 for the 3 writers (workers x hosts) as far as the images allow" in (
      info["shards"]["validation"]["why"])
  assert sorted(n for n in os.listdir(out) if n.startswith("train-")) == [
      "train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003"]


def test_an_explicit_count_works_as_before(tmp_path):
  photos = _photos(tmp_path / "in", {"train": 2, "val": 1}, classes=("a", "b"))
  info = build.build(_config(photos, tmp_path / "out", train_shards=4, validation_shards=1))
  assert info["splits"]["train"]["num_shards"] == 4
  assert info["shards"]["train"] == {"flag": 4, "num_shards": 4, "why": "--train_shards=4"}
  with pytest.raises(sources.InputError, match="--train_shards=5 is more than the 4 train"):
    build.build(_config(photos, tmp_path / "out2", train_shards=5))


def test_resume_keeps_the_auto_counts_of_the_unfinished_build(tmp_path):
  """A build started as one of 2 hosts (2 writers: 2 shards) and finished by one host with one
  worker (1 writer: 1 shard by bytes) keeps 2: the same dataset as an uninterrupted build."""
  photos = _photos(tmp_path / "in", {"train": 3, "val": 1}, classes=("a", "b"))
  assert build.build(_config(photos, tmp_path / "reference", num_hosts=2)) is None
  reference = build.build(_config(photos, tmp_path / "reference", num_hosts=2, host_index=1))
  assert reference["splits"]["train"]["num_shards"] == 2
  out = tmp_path / "out"
  assert build.build(_config(photos, out, num_hosts=2, host_index=0)) is None
  with open(out / build.STATE_DIR / build.STATE_FILENAME) as f:
    assert json.load(f)["num_shards"] == {"train": 2, "validation": 2}
  info = build.build(_config(photos, out))   # one host, one worker
  assert info["splits"]["train"]["num_shards"] == 2
  assert "kept from the build already in the output folder" in info["shards"]["train"]["why"]
  names = sorted(n for n in os.listdir(out) if n.startswith(("train-", "validation-")))
  for name in names:
    assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
  # Rerun: complete, nothing to do. An explicit other count is a different build: refused.
  assert build.build(_config(photos, out)) == info
  with pytest.raises(sources.InputError, match="num_shards"):
    build.build(_config(photos, out, train_shards=1))


def test_auto_on_an_empty_split_names_the_split_and_what_is_allowed(tmp_path):
  photos = _photos(tmp_path / "in", {"train": 2}, classes=("a", "b"))
  os.makedirs(tmp_path / "in" / "val" / "a")
  (tmp_path / "in" / "val" / "a" / "notes.txt").write_text("not an image")
  # An empty class folder is refused by itself (naming it); allowed, its split is empty.
  with pytest.raises(sources.InputError, match=r"in/val hold no images"):
    build.build(_config(photos, tmp_path / "out"))
  with pytest.raises(sources.InputError) as error:
    build.build(_config(photos, tmp_path / "out", allow_empty_classes=True))
  message = str(error.value)
  assert "--validation_shards=auto: the validation split" in message
  assert "holds no images" in message and "notes.txt" in message and ".jpg" in message
  assert not os.path.exists(tmp_path / "out")
  # A number keeps today's behaviour: the empty split is not built.
  info = build.build(_config(photos, tmp_path / "out", validation_shards=1,
                             allow_empty_classes=True))
  assert list(info["splits"]) == ["train"]


def test_a_bad_shard_flag_is_refused(tmp_path):
  run = subprocess.run([sys.executable, "-m", "tfrecords.build", f"--input={tmp_path}",
                        f"--output_dir={tmp_path / 'out'}", "--train_shards=many"],
                       capture_output=True, text=True, timeout=120, env=tiny_data.child_env())
  assert run.returncode != 0
  assert "--train_shards=many: expected 'auto' or a number of shards in 1..99999" in run.stderr
