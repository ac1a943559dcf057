"""tfrecords.build under faults and hostile input (issue 17), each as a real `python -m
tfrecords.build` process on real files: --overwrite beside the user's own files, a worker
killed with SIGKILL, SIGTERM, symbolic-link loops and links out of the input, an empty class
folder, a decompression-bomb PNG, and a full disk (a real tmpfs, when this process may mount
one)."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from keras_alexnet import dataset_info
import tiny_data

REPO = tiny_data.REPO
TIMEOUT = 240   # Seconds any one build may take on a busy machine; a hang fails the test.


def _jpeg(seed, size=64):
  return tiny_data.encode(tiny_data.photo(size, size + 8, seed), "JPEG")


def _class_folders(root, classes=("cat", "dog"), per_class=4, validation=2):
  for split, count in (("train", per_class), ("val", validation)):
    for k, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        with open(os.path.join(folder, f"{name}_{i}.jpg"), "wb") as f:
          f.write(_jpeg(100 * k + 10 * (split == "val") + i))
  return str(root)


def _build(input_dir, output_dir, *flags, wait=True):
  args = [sys.executable, "-m", "tfrecords.build", f"--input={input_dir}",
          f"--output_dir={output_dir}", "--train_shards=2", "--validation_shards=1",
          "--num_workers=1", "--noprogress", *flags]
  process = subprocess.Popen(args, cwd=REPO, env=tiny_data.child_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  if not wait:
    return process
  out, _ = process.communicate(timeout=TIMEOUT)
  return process.returncode, out


def _skipped(output_dir):
  with open(os.path.join(output_dir, "skipped.txt")) as f:
    return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def _filenames(output_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from keras_alexnet import features  # pylint: disable=g-import-not-at-top
  names = []
  info = dataset_info.read(output_dir)
  for split, meta in info["splits"].items():
    for i in range(meta["num_shards"]):
      path = os.path.join(output_dir, features.shard_name(split, i, meta["num_shards"]))
      for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        names.append((split, feature[features.FILENAME].bytes_list.value[0].decode()))
  return sorted(names)


# ---------------------------------------------------------------------------------------------
# Nothing of the user's is deleted.


def test_overwrite_removes_only_the_files_the_build_listed(tmp_path):
  data = _class_folders(tmp_path / "in")
  out = str(tmp_path / "out")
  code, log = _build(data, out, "--train_shards=3")
  assert code == 0, log
  first = dataset_info.read(out)
  assert sorted(first["files"]) == sorted(
      ["train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003",
       "validation-00000-of-00001", "labels.txt", "skipped.txt", "mean_image.npy",
       "dataset_info.json"])
  assert first["splits"]["train"]["shard_bytes"] == [
      os.path.getsize(os.path.join(out, f"train-0000{i}-of-00003")) for i in range(3)]
  # The user's own things, named like the builder's: a folder, a shard-like file, temporaries.
  os.makedirs(os.path.join(out, "validation-00000-of-00009", "inner"))
  with open(os.path.join(out, "validation-00000-of-00009", "inner", "notes.txt"), "w") as f:
    f.write("mine")
  mine = {"train-00000-of-00001": b"user data", ".tmp-train-00000-of-00002.mine": b"user tmp",
          ".tmp-notes": b"x", "README": b"my dataset"}
  for name, content in mine.items():
    with open(os.path.join(out, name), "wb") as f:
      f.write(content)

  code, log = _build(data, out, "--overwrite", "--seed=1")   # a different build: 2 shards
  assert code == 0, log
  assert "--overwrite: removed 8 file(s)" in log and "train-00002-of-00003" in log, log
  for name, content in mine.items():
    with open(os.path.join(out, name), "rb") as f:
      assert f.read() == content, name
  with open(os.path.join(out, "validation-00000-of-00009", "inner", "notes.txt")) as f:
    assert f.read() == "mine"
  assert not os.path.exists(os.path.join(out, "train-00002-of-00003"))
  assert dataset_info.read(out)["build"]["seed"] == 1
  assert not os.path.exists(os.path.join(out, ".build"))


def test_a_name_the_build_must_write_taken_by_a_user_file_is_refused(tmp_path):
  data = _class_folders(tmp_path / "in")
  out = tmp_path / "out"
  os.makedirs(out / "train-00001-of-00002")     # a user's folder under a shard's name
  with open(out / "train-00001-of-00002" / "keep.txt", "w") as f:
    f.write("mine")
  for flags in ((), ("--overwrite",)):
    code, log = _build(data, str(out), *flags)
    assert code != 0 and "the folder 'train-00001-of-00002'" in log, log
    assert "Nothing was changed" in log
  assert sorted(os.listdir(out)) == ["train-00001-of-00002"]
  assert os.listdir(out / "train-00001-of-00002") == ["keep.txt"]


# ---------------------------------------------------------------------------------------------
# Bounded time: a dead worker, SIGTERM.


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory):
  """Two classes of large PNGs (~0.5 s each to decode): builds that last seconds."""
  root = tmp_path_factory.mktemp("slow")
  big = io.BytesIO()
  Image.new("L", (6000, 6000), 90).save(big, "PNG")
  for split, count in (("train", 8), ("val", 2)):
    for name in ("a", "b"):
      os.makedirs(root / split / name)
      for i in range(count):
        with open(root / split / name / f"{name}{i}.png", "wb") as f:
          f.write(big.getvalue())
  return str(root)


def _descendants(pid):
  """pids of every process below `pid` (forkserver workers are its grandchildren)."""
  parents = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      parents.setdefault(int(fields[1]), []).append(int(entry))
  found, todo = [], [pid]
  while todo:
    children = parents.get(todo.pop(), [])
    found.extend(children)
    todo.extend(children)
  return found


def _workers(pid):
  """The pool's worker processes: the grandchildren (children of the forkserver)."""
  return [p for p in _descendants(pid) if _ppid(p) != pid]


def _ppid(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[1])
  except OSError:
    return -1


def _wait_for_workers(process, count, timeout=TIMEOUT):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, process.communicate()[0]
    workers = _workers(process.pid)
    if len(workers) >= count:
      return workers
    time.sleep(0.05)
  raise AssertionError("the pool's workers did not start")


def test_a_killed_worker_ends_the_build_naming_it_and_the_rerun_resumes(slow_input, tmp_path):
  out = str(tmp_path / "out")
  process = _build(slow_input, out, "--num_workers=2", "--train_shards=4", wait=False)
  victim = _wait_for_workers(process, 2)[0]
  time.sleep(1.0)   # into the shards, past the listing
  os.kill(victim, signal.SIGKILL)
  started = time.monotonic()
  out_text, _ = process.communicate(timeout=TIMEOUT)
  assert process.returncode != 0, out_text
  assert time.monotonic() - started < 60
  assert f"worker process {victim} (killed by signal 9" in out_text, out_text
  assert "rerun the same command to resume" in out_text
  assert not _descendants(process.pid)
  assert not os.path.exists(os.path.join(out, dataset_info.FILENAME))

  code, log = _build(slow_input, out, "--num_workers=2", "--train_shards=4")
  assert code == 0, log
  info = dataset_info.read(out)
  assert info["splits"]["train"]["num_examples"] == 16
  assert info["splits"]["validation"]["num_examples"] == 4


def test_sigterm_stops_a_build_within_seconds_and_it_resumes(slow_input, tmp_path):
  out = str(tmp_path / "out")
  process = _build(slow_input, out, "--num_workers=2", "--train_shards=4", wait=False)
  workers = _wait_for_workers(process, 2)
  time.sleep(1.0)
  process.send_signal(signal.SIGTERM)
  started = time.monotonic()
  log, _ = process.communicate(timeout=30)
  assert time.monotonic() - started < 15, log
  assert process.returncode == 128 + signal.SIGTERM, log
  assert "SIGTERM received" in log
  time.sleep(0.5)
  assert not [w for w in workers if os.path.exists(f"/proc/{w}")]   # no orphans
  # What it wrote is no final-named half shard: a rerun finishes with every image.
  code, log = _build(slow_input, out, "--num_workers=1", "--train_shards=4")
  assert code == 0, log
  assert dataset_info.read(out)["splits"]["train"]["num_examples"] == 16


# ---------------------------------------------------------------------------------------------
# The input tree: links, empty classes, bombs.


def test_symlink_loops_are_walked_once_and_outside_links_not_followed(tmp_path):
  data = _class_folders(tmp_path / "in")
  cat = tmp_path / "in" / "train" / "cat"
  os.symlink(".", cat / "self")          # two self-references: exponential with os.walk
  os.symlink("..", cat / "parent")
  os.symlink("cat_0.jpg", cat / "again.jpg")   # the same file under a second name
  outside = tmp_path / "elsewhere"
  os.makedirs(outside)
  with open(outside / "secret.jpg", "wb") as f:
    f.write(_jpeg(999))
  os.symlink(outside, cat / "outside_dir")
  os.symlink(outside / "secret.jpg", cat / "outside.jpg")
  out = str(tmp_path / "out")
  started = time.monotonic()
  code, log = _build(data, out)
  assert code == 0, log
  # Bounded: os.walk(followlinks=True) over these two self-links was still going after 120 s.
  assert time.monotonic() - started < 90, log
  names = _filenames(out)
  assert [n for s, n in names if s == "train"] == sorted(
      [f"cat/cat_{i}.jpg" for i in range(4)] + [f"dog/dog_{i}.jpg" for i in range(4)])
  assert not any("secret" in n for _, n in names)
  reasons = {name: reason for _, name, reason in _skipped(out)}
  assert "outside the input folder" in reasons["cat/outside_dir"]
  assert "outside the input folder" in reasons["cat/outside.jpg"]
  assert "listed once" in reasons["cat/self"] and "listed once" in reasons["cat/again.jpg"]

  code, log = _build(data, str(tmp_path / "out2"), "--follow_outside_links")
  assert code == 0, log
  assert ("train", "cat/outside.jpg") in _filenames(str(tmp_path / "out2"))


def test_an_empty_class_folder_is_an_error_naming_it_unless_allowed(tmp_path):
  data = _class_folders(tmp_path / "in")
  os.makedirs(tmp_path / "in" / "train" / "emu")
  with open(tmp_path / "in" / "train" / "emu" / "notes.txt", "w") as f:
    f.write("no images here")
  code, log = _build(data, str(tmp_path / "out"))
  assert code != 0 and os.path.join(data, "train", "emu") in log, log
  assert "--allow_empty_classes" in log
  assert not os.path.exists(tmp_path / "out")
  code, log = _build(data, str(tmp_path / "out"), "--allow_empty_classes")
  assert code == 0, log
  assert "hold no images" in log
  info = dataset_info.read(str(tmp_path / "out"))
  assert [c[0] for c in info["classes"]] == ["cat", "dog", "emu"]


def test_a_decompression_bomb_is_skipped_from_its_header_with_bounded_memory(tmp_path):
  data = _class_folders(tmp_path / "in")
  bomb = tiny_data.bomb_png(20000, 20000)
  assert len(bomb) < 2_000_000    # 1.2 GB of pixels in about a megabyte
  with open(tmp_path / "in" / "train" / "cat" / "bomb.png", "wb") as f:
    f.write(bomb)
  out = str(tmp_path / "out")
  args = [sys.executable, "-m", "tfrecords.build", f"--input={data}", f"--output_dir={out}",
          "--train_shards=2", "--validation_shards=1", "--num_workers=1", "--noprogress"]
  code, log, peak_kb = tiny_data.peak_rss_kb(args, cwd=REPO, env=tiny_data.child_env(),
                                             timeout=TIMEOUT)
  assert code == 0, log
  reasons = {name: reason for _, name, reason in _skipped(out)}
  assert reasons["cat/bomb.png"] == ("too many pixels: 20000x20000 = 400,000,000 > the limit "
                                     "89,478,485 (--max_image_pixels)")
  # The builder (one process here, --num_workers=1; TF itself takes ~0.7 GB) never held the
  # bomb's 1.2 GB of pixels.
  assert peak_kb < 1_100_000, peak_kb
  code, log = _build(data, str(tmp_path / "out2"), "--max_image_pixels=1000")
  assert code == 0, log
  assert all("too many pixels" in r for _, _, r in _skipped(str(tmp_path / "out2")))


# ---------------------------------------------------------------------------------------------
# A full disk (a real one: a small tmpfs).


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
  return result.returncode == 0


def test_a_full_disk_names_the_folder_and_free_space_and_the_build_resumes(tmp_path):
  disk = tmp_path / "disk"
  if not (shutil.which("mount") and os.geteuid() == 0 and _mount_tmpfs(disk, "4m")):
    pytest.skip("needs root and mount to make a small tmpfs (a real full disk)")
  try:
    data = _class_folders(tmp_path / "in", per_class=12)
    out = str(disk / "out")
    code, log = _build(data, out, "--train_shards=8")
    assert code != 0, log
    assert f"the disk holding {out}" in log and "bytes free" in log, log
    assert "Traceback" not in log
    assert not os.path.exists(os.path.join(out, dataset_info.FILENAME))
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    code, log = _build(data, out, "--train_shards=8")
    assert code == 0, log
    assert "Resuming" in log, log
    assert dataset_info.read(out)["splits"]["train"]["num_examples"] == 24
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)
