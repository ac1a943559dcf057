"""tfrecords.build end to end: tiny ILSVRC-shaped tars and folders made here from real JPEG
bytes (CMYK, grayscale, PNG named .JPEG, progressive, truncated, empty, text), built into real
TFRecords and read back with TF."""

import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from keras_alexnet import data as ilsvrc_data
from keras_alexnet import dataset_info
from keras_alexnet import features
from tfrecords import build
from tfrecords import image
from tfrecords import sources
import tiny_data  # tests/tiny_data.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WNIDS = ("n01440764", "n01443537")          # labels 0 and 1: tench, goldfish
BAD = {"n01440764_9003.JPEG": "truncated", "n01443537_9001.JPEG": "empty file",
       "n01443537_9002.JPEG": "not an image"}


def _photo(rng, width, height) -> Image.Image:
  """A smooth random picture with some grain: JPEG-compresses like a photo, not like noise."""
  low = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.int16)
  grain = rng.integers(-6, 7, smooth.shape)
  return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def _encode(picture: Image.Image, fmt="JPEG", **kwargs) -> bytes:
  buffer = io.BytesIO()
  picture.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _ilsvrc_files(seed=0) -> dict:
  """{split: {relative name: bytes}} shaped like ILSVRC-2012, with every troublesome kind."""
  rng = np.random.default_rng(seed)
  train = {}
  for wnid in WNIDS:
    for i in range(5):
      picture = _photo(rng, int(rng.integers(180, 420)), int(rng.integers(180, 420)))
      train[f"{wnid}/{wnid}_{1000 + i}.JPEG"] = _encode(picture, quality=90)
  odd = _photo(rng, 333, 260)
  train["n01440764/n01440764_9000.JPEG"] = _encode(odd.convert("CMYK"), quality=92)
  train["n01440764/n01440764_9001.JPEG"] = _encode(odd.convert("L"), quality=90)
  train["n01440764/n01440764_9002.JPEG"] = _encode(odd, "PNG")
  train["n01443537/n01443537_9000.JPEG"] = _encode(odd, quality=90, progressive=True)
  train["n01440764/n01440764_9003.JPEG"] = _encode(odd, quality=90)[:2500]
  train["n01443537/n01443537_9001.JPEG"] = b""
  train["n01443537/n01443537_9002.JPEG"] = b"wnid\tname\nthis is a text file\n"
  validation = {f"ILSVRC2012_val_{i:08d}.JPEG": _encode(_photo(rng, 300, 240), quality=90)
                for i in range(1, 7)}
  return {"train": train, "val": validation}


def _write_folders(root, files) -> str:
  for split, members in files.items():
    for name, content in members.items():
      path = os.path.join(root, split, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(content)
  return str(root)


def _add(tar, name, content):
  info = tarfile.TarInfo(name)
  info.size = len(content)
  tar.addfile(info, io.BytesIO(content))


def _write_tars(root, files) -> str:
  """ILSVRC2012_img_train.tar holding one tar per wnid; ILSVRC2012_img_val.tar flat."""
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, sources.TRAIN_TAR), "w") as outer:
    for wnid in WNIDS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for name, content in sorted(files["train"].items()):
          if name.startswith(wnid):
            _add(tar, os.path.basename(name), content)
      _add(outer, f"{wnid}.tar", inner.getvalue())
  with tarfile.open(os.path.join(root, sources.VALIDATION_TAR), "w") as tar:
    for name, content in sorted(files["val"].items()):
      _add(tar, name, content)
  return str(root)


def _records(path) -> list[dict]:
  out = []
  for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
    parsed = tf.io.parse_single_example(raw, features.FEATURE_SPEC)
    out.append({k: v.numpy() for k, v in parsed.items()})
  return out


def _decode(encoded) -> np.ndarray:
  """As libjpeg decodes by default. TF's default (dct_method "", i.e. INTEGER_FAST) would
  shift the mean of red and blue by about -1.2 against the pixels the builder encoded."""
  return tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE").numpy()


def _split_records(output_dir, split) -> list[dict]:
  names = sorted(n for n in os.listdir(output_dir) if n.startswith(split + "-"))
  return [r for n in names for r in _records(os.path.join(output_dir, n))]


def _files(output_dir) -> dict:
  return {n: open(os.path.join(output_dir, n), "rb").read()
          for n in sorted(os.listdir(output_dir))}


def _config(input_path, output_dir, **kwargs) -> build.BuildConfig:
  kwargs.setdefault("train_shards", 3)
  kwargs.setdefault("validation_shards", 2)
  kwargs.setdefault("num_workers", 1)
  kwargs.setdefault("progress", False)
  return build.BuildConfig(input=str(input_path), output_dir=str(output_dir), **kwargs)


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
  """The same images as tars and as extracted folders, and the tar build with one worker."""
  root = tmp_path_factory.mktemp("ilsvrc")
  files = _ilsvrc_files()
  tars = _write_tars(root / "tars", files)
  folders = _write_folders(root / "folders", files)
  output = root / "out_tars_1"
  info = build.build(_config(tars, output))
  return dict(files=files, tars=tars, folders=folders, output=str(output), info=info, root=root)


def test_labels_names_counts_and_skipped(ilsvrc):
  info, output, files = ilsvrc["info"], ilsvrc["output"], ilsvrc["files"]
  classes = [tuple(c) for c in info["classes"]]
  assert classes == list(ilsvrc_data.ilsvrc2012_classes())
  assert info["format"] == "keras_alexnet" and info["label_offset"] == 0
  assert info["num_classes"] == 1000 and info["image_size"] == 256
  assert classes[0] == ("n01440764", "tench, Tinca tinca")
  assert classes[1] == ("n01443537", "goldfish, Carassius auratus")

  train = _split_records(output, "train")
  good = sorted(os.path.basename(n) for n in files["train"] if os.path.basename(n) not in BAD)
  assert sorted(r[features.FILENAME].decode() for r in train) == good
  for record in train:
    wnid = record[features.FILENAME].decode().split("_")[0]
    assert record[features.LABEL] == WNIDS.index(wnid)
    assert record[features.SYNSET].decode() == wnid
    assert record[features.TEXT].decode() == classes[WNIDS.index(wnid)][1]

  validation = _split_records(output, "validation")
  truth = ilsvrc_data.ilsvrc2012_validation_wnids()
  assert truth[0] == "n01751748"   # ILSVRC2012_val_00000001.JPEG is a sea snake
  assert len(validation) == 6
  for record in validation:
    number = int(record[features.FILENAME].decode()[len("ILSVRC2012_val_"):-len(".JPEG")])
    assert record[features.SYNSET].decode() == truth[number - 1]
    assert classes[record[features.LABEL]][0] == truth[number - 1]

  splits = info["splits"]
  assert splits["train"]["num_examples"] == len(good) == sum(splits["train"]["shard_lengths"])
  assert splits["train"]["num_shards"] == len(splits["train"]["shard_lengths"]) == 3
  assert splits["train"]["num_skipped"] == len(BAD)
  assert splits["validation"]["num_examples"] == 6
  assert sorted(os.listdir(output)) == sorted(
      ["dataset_info.json", "labels.txt", "mean_image.npy", "skipped.txt"]
      + [features.shard_name("train", i, 3) for i in range(3)]
      + [features.shard_name("validation", i, 2) for i in range(2)])

  skipped = [line.rstrip("\n").split("\t") for line in open(os.path.join(output, "skipped.txt"))]
  assert [(s, f) for s, f, _ in skipped] == [("train", f) for f in sorted(BAD)]
  for _, filename, reason in skipped:
    assert BAD[filename] in reason, (filename, reason)

  labels = open(os.path.join(output, "labels.txt")).read().splitlines()
  assert len(labels) == 1000 and labels[1] == "1\tn01443537\tgoldfish, Carassius auratus"
  assert dataset_info.read(output) == info


def test_every_image_is_rgb_256_and_odd_formats_convert(ilsvrc):
  records = (_split_records(ilsvrc["output"], "train")
             + _split_records(ilsvrc["output"], "validation"))
  for record in records:
    decoded = tf.io.decode_jpeg(record[features.ENCODED])   # what the input pipeline does
    assert decoded.shape == (256, 256, 3)
    assert (record[features.HEIGHT], record[features.WIDTH]) == (256, 256)
    assert record[features.CHANNELS] == 3 and record[features.FORMAT] == b"JPEG"
  by_name = {r[features.FILENAME].decode(): r for r in records}
  reference = image.convert(ilsvrc["files"]["train"]["n01443537/n01443537_9000.JPEG"], 256,
                            95).pixels.astype(np.float64)   # the progressive RGB original
  for name in ("n01440764_9000.JPEG", "n01440764_9002.JPEG"):   # CMYK, PNG named .JPEG
    stored = _decode(by_name[name][features.ENCODED]).astype(np.float64)
    assert np.abs(stored - reference).mean() < 4, name    # the colours survived, not inverted
  gray = _decode(by_name["n01440764_9001.JPEG"][features.ENCODED])
  assert np.abs(gray[..., 0].astype(int) - gray[..., 2]).max() <= 3


def test_statistics_match_numpy(ilsvrc):
  info, output = ilsvrc["info"], ilsvrc["output"]
  by_name = {os.path.basename(n): b for n, b in ilsvrc["files"]["train"].items()}
  records = _split_records(output, "train")
  names = [r[features.FILENAME].decode() for r in records]
  # The pixels the builder handed to the JPEG encoder: the statistics are exact over them.
  pixels = np.stack([image.convert(by_name[n], 256, 95).pixels for n in names])
  pixels = pixels.astype(np.float64)
  flat = pixels.reshape(-1, 3)
  np.testing.assert_allclose(info["mean_rgb"], flat.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(info["rgb_covariance"], np.cov(flat.T, bias=True), rtol=1e-9)
  mean_image = np.load(os.path.join(output, "mean_image.npy"))
  assert mean_image.dtype == np.float32 and mean_image.shape == (256, 256, 3)
  np.testing.assert_allclose(mean_image, pixels.mean(axis=0), rtol=1e-6)
  values, vectors = np.array(info["eigenvalues"]), np.array(info["eigenvectors"])
  assert values[0] >= values[1] >= values[2] > 0
  covariance = np.array(info["rgb_covariance"])
  np.testing.assert_allclose(covariance @ vectors, vectors * values, rtol=1e-9)
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-12)
  # What the pipeline decodes differs from those pixels only by the JPEG q95 noise.
  stored = np.stack([_decode(r[features.ENCODED]) for r in records])
  stored = stored.astype(np.float64)
  assert np.abs(stored.reshape(-1, 3).mean(axis=0) - info["mean_rgb"]).max() < 0.5
  assert np.abs(stored.mean(axis=0) - mean_image).mean() < 1.0


def test_bytes_identical_for_1_and_2_workers_and_for_tars_and_folders(ilsvrc):
  one = _files(ilsvrc["output"])
  two_dir = ilsvrc["root"] / "out_tars_2"
  build.build(_config(ilsvrc["tars"], two_dir, num_workers=2))
  assert _files(two_dir) == one
  folders_dir = ilsvrc["root"] / "out_folders"
  info = build.build(_config(ilsvrc["folders"], folders_dir))
  assert info["build"]["layout"] == "ilsvrc_folders"
  folders = _files(folders_dir)
  assert folders.keys() == one.keys()
  for name in one:
    if name != dataset_info.FILENAME:    # it records where the input was; nothing else differs
      assert folders[name] == one[name], name


def test_hosts_write_disjoint_shards_of_one_dataset(ilsvrc, tmp_path):
  output = tmp_path / "hosts"
  assert build.build(_config(ilsvrc["tars"], output, host_index=1, num_hosts=2)) is None
  written = sorted(n for n in os.listdir(output) if build.SHARD_PATTERN.fullmatch(n))
  assert written == ["train-00001-of-00003", "validation-00000-of-00002"]
  assert not os.path.exists(output / dataset_info.FILENAME)
  info = build.build(_config(ilsvrc["tars"], output, host_index=0, num_hosts=2))
  assert info == ilsvrc["info"]
  assert _files(output) == _files(ilsvrc["output"])


def test_verify_passes_then_catches_a_corrupted_shard(ilsvrc, tmp_path):
  output = tmp_path / "copy"
  shutil.copytree(ilsvrc["output"], output)
  assert build.verify(str(output), workers=1, progress=False) == []
  shard = output / "train-00001-of-00003"
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0x55
  shard.write_bytes(bytes(data))
  problems = build.verify(str(output), workers=1, progress=False)
  assert problems and all("train-00001-of-00003" in p for p in problems), problems
  # The command line says so, with a non-zero exit code.
  run = _cli(f"--output_dir={output}", "--verify", "--num_workers=1")
  assert run.returncode != 0
  assert "train-00001-of-00003" in run.stderr and "problems" in run.stderr


def test_keep_originals(ilsvrc, tmp_path):
  output = tmp_path / "none"
  info = build.build(_config(ilsvrc["folders"], output, image_size=None))
  assert info["image_size"] is None and info["mean_image"] is None
  assert not os.path.exists(output / "mean_image.npy")
  by_name = {os.path.basename(n): b for n, b in ilsvrc["files"]["train"].items()}
  records = {r[features.FILENAME].decode(): r for r in _split_records(output, "train")}
  assert records["n01440764_1000.JPEG"][features.ENCODED] == by_name["n01440764_1000.JPEG"]
  for name in ("n01440764_9000.JPEG", "n01440764_9001.JPEG", "n01440764_9002.JPEG"):
    encoded = records[name][features.ENCODED]
    assert encoded != by_name[name]           # CMYK, grayscale, PNG: re-encoded as RGB JPEG
    assert tf.io.decode_jpeg(encoded).shape == (260, 333, 3)
  # Over images of differing sizes; the re-encoded ones differ by JPEG noise from their pixels.
  pixels = np.concatenate([_decode(r[features.ENCODED]).reshape(-1, 3)
                           for r in records.values()]).astype(np.float64)
  np.testing.assert_allclose(info["mean_rgb"], pixels.mean(axis=0), atol=0.5)
  assert build.verify(str(output), workers=1, progress=False) == []


# ---------------------------------------------------------------------------------------------
# Class folders, label files, bad input, resume.


def _class_folders(root, classes=("cat", "dog", "fish"), per_class=4, size=(300, 240),
                   validation="folders", seed=1) -> str:
  rng = np.random.default_rng(seed)
  for split in ("train", "val"):
    for c in classes:
      for i in range(per_class):
        if split == "train" or validation == "folders":
          folder, name = os.path.join(root, split, c), f"{i}.jpg"
        else:
          folder, name = os.path.join(root, split), f"{c}_{i}.jpg"
        os.makedirs(folder, exist_ok=True)
        _photo(rng, *size).save(os.path.join(folder, name), quality=90)
  return str(root)


def test_class_folders_labels_are_sorted_folder_names(tmp_path):
  source = _class_folders(tmp_path / "in", classes=("zebra", "ant", "n01443537"))
  with open(tmp_path / "in" / "train" / "ant" / "notes.txt", "w") as f:
    f.write("not an image")
  info = build.build(_config(source, tmp_path / "out"))
  assert info["build"]["layout"] == "class_folders"
  assert info["classes"] == [["ant", "ant"], ["n01443537", "goldfish, Carassius auratus"],
                             ["zebra", "zebra"]]
  for record in _split_records(tmp_path / "out", "train"):
    folder = record[features.FILENAME].decode().split("/")[0]
    assert info["classes"][record[features.LABEL]][0] == folder
  skipped = open(tmp_path / "out" / "skipped.txt").read()
  assert skipped.startswith("train\tant/notes.txt\tnot an image file name")


def test_flat_validation_needs_labels_and_takes_a_labels_file(tmp_path):
  source = _class_folders(tmp_path / "in", validation="flat")
  with pytest.raises(sources.InputError, match="no labels"):
    build.build(_config(source, tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
  names = sorted(os.listdir(tmp_path / "in" / "val"))
  labels = tmp_path / "pairs.txt"
  labels.write_text("".join(f"{n} {n.split('_')[0]}\n" for n in names))
  info = build.build(_config(source, tmp_path / "out", validation_labels_file=str(labels)))
  records = _split_records(tmp_path / "out", "validation")
  assert len(records) == len(names)
  for record in records:
    cls = record[features.FILENAME].decode().split("_")[0]
    assert info["classes"][record[features.LABEL]][0] == cls
  # One label per line, in sorted file name order, gives the same records.
  ordered = tmp_path / "ordered.txt"
  ordered.write_text("".join(f"{n.split('_')[0]}\n" for n in names))
  build.build(_config(source, tmp_path / "out2", validation_labels_file=str(ordered)))
  assert _split_records(tmp_path / "out2", "validation") == records


def test_bad_input_is_refused_before_any_work(tmp_path):
  with pytest.raises(sources.InputError, match="does not exist"):
    build.build(_config(tmp_path / "missing", tmp_path / "out"))
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "photo.jpg").write_bytes(b"x")
  with pytest.raises(sources.InputError, match="matches no layout"):
    build.build(_config(tmp_path / "junk", tmp_path / "out"))
  source = _class_folders(tmp_path / "in", per_class=2)
  with pytest.raises(sources.InputError, match="more than the 6 train images"):
    build.build(_config(source, tmp_path / "out", train_shards=7))
  assert not os.path.exists(tmp_path / "out")


def test_output_of_another_build_is_refused_unless_overwrite(tmp_path):
  source = _class_folders(tmp_path / "in", per_class=2)
  out = tmp_path / "out"
  info = build.build(_config(source, out))
  (out / "mine.txt").write_text("a file of the user's")
  before = {n: (os.stat(out / n).st_mtime_ns, b) for n, b in _files(out).items()}
  assert build.build(_config(source, out)) == info          # same build: nothing to do
  with pytest.raises(sources.InputError, match="jpeg_quality: 95 there, 90 now") as error:
    build.build(_config(source, out, jpeg_quality=90))
  assert "--overwrite" in str(error.value)
  with pytest.raises(sources.InputError, match="different input"):
    build.build(_config(_class_folders(tmp_path / "in2", per_class=2, seed=3), out))
  assert {n: (os.stat(out / n).st_mtime_ns, b) for n, b in _files(out).items()} == before
  info90 = build.build(_config(source, out, jpeg_quality=90, overwrite=True))
  assert info90["build"]["jpeg_quality"] == 90
  assert (out / "mine.txt").read_text() == "a file of the user's"
  run = _cli(f"--input={tmp_path / 'nowhere'}", f"--output_dir={out}")
  assert run.returncode != 0 and "does not exist" in run.stderr


def _cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "tfrecords.build", "--noprogress", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_resume_after_kill_gives_the_same_bytes(tmp_path):
  source = _class_folders(tmp_path / "in", classes=("a", "b"), per_class=40, size=(480, 360))
  reference = tmp_path / "reference"
  build.build(_config(source, reference, train_shards=20))

  # A build in another process, SIGKILLed mid-way. It forks from the builder's own forkserver
  # (TF already imported there), so the test does not pay for a fresh interpreter.
  killed = tmp_path / "killed"
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(build._WORKER_PRELOAD)
  process = context.Process(target=build.build, args=(_config(source, killed, train_shards=20),))
  process.start()
  deadline = time.monotonic() + 120
  while not os.path.exists(killed / "train-00002-of-00020") and time.monotonic() < deadline:
    assert process.exitcode is None, "the build ended before it could be killed"
    time.sleep(0.001)
  os.kill(process.pid, signal.SIGKILL)
  process.join()
  assert not os.path.exists(killed / dataset_info.FILENAME)
  done = [n for n in os.listdir(killed) if build.SHARD_PATTERN.fullmatch(n)]
  assert 3 <= len(done) < 22, done

  info = build.build(_config(source, killed, train_shards=20))
  assert info["splits"]["train"]["num_examples"] == 80
  assert _files(killed) == _files(reference)     # no temporary files left either


def test_a_script_without_main_guard_can_use_workers(tmp_path):
  """Workers do not re-run the caller's main module (multiprocessing would, and a script with
  no `if __name__ == "__main__":` guard would then start builds in its workers, forever)."""
  source = _class_folders(tmp_path / "in", per_class=2)
  script = tmp_path / "script.py"
  script.write_text(
      "from tfrecords import build\n"
      f"info = build.build(build.BuildConfig(input={source!r}, output_dir="
      f"{str(tmp_path / 'out')!r}, num_workers=2, train_shards=2, validation_shards=2, "
      "progress=False))\n"
      "print('examples', info['splits']['train']['num_examples'])\n")
  run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, env=tiny_data.child_env())
  assert run.returncode == 0, run.stderr[-2000:]
  assert "examples 6" in run.stdout
