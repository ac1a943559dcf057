"""The export and the served model under hostile input and faults (issue 17): decompression
bombs refused from their headers in a fresh process with bounded memory, a killed export's
temporary folder cleaned (and nobody else's), --overwrite removing only what an export wrote.
"""

import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from PIL import Image
import pytest
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import export
import tiny_data
from test_export import CLASSES, small_net

REPO = tiny_data.REPO
TIMEOUT = 300

SERVE = textwrap.dedent("""
    import sys
    import tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    for path in sys.argv[2:]:
      data = open(path, "rb").read()
      try:
        out = serve(image_bytes=tf.constant([data]))
        print("SERVED", path, int(out["top5_classes"][0, 0]))
      except tf.errors.InvalidArgumentError as e:
        print("REFUSED", path, e.message.replace("\\n", " ")[:600])
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  base = str(tmp_path_factory.mktemp("serving"))
  stats = dataset_info.imagenet_statistics()
  return export.export_saved_model(small_net(), {"classes": CLASSES}, stats, base,
                                   warmup=False)


def _jpeg_declaring(height, width):
  """A real small JPEG whose frame header (SOF0) is rewritten to declare height x width."""
  data = bytearray(tiny_data.encode(tiny_data.photo(64, 64, 0), "JPEG"))
  sof = data.index(b"\xff\xc0")
  data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
  return bytes(data)


def test_bombs_are_refused_from_the_header_with_bounded_memory(exported, tmp_path):
  files = {"ok.png": tiny_data.encode(tiny_data.photo(300, 200, 1), "PNG"),
           "bomb.png": tiny_data.bomb_png(20000, 20000),
           "bomb.jpg": _jpeg_declaring(30000, 30000)}
  for name, data in files.items():
    with open(tmp_path / name, "wb") as f:
      f.write(data)
  script = tmp_path / "serve.py"
  script.write_text(SERVE)
  env = tiny_data.child_env()
  code, out, small_kb = tiny_data.peak_rss_kb(
      [sys.executable, str(script), exported, str(tmp_path / "ok.png")], env=env,
      timeout=TIMEOUT)
  assert code == 0 and "SERVED" in out, out
  code, out, bombs_kb = tiny_data.peak_rss_kb(
      [sys.executable, str(script), exported, str(tmp_path / "bomb.png"),
       str(tmp_path / "bomb.jpg"), str(tmp_path / "ok.png")], env=env, timeout=TIMEOUT)
  assert code == 0, out
  refused = [line for line in out.splitlines() if line.startswith("REFUSED")]
  assert len(refused) == 2, out
  assert "[400000000] [pixels" in refused[0] and "limit of 89478485" in refused[0], refused
  assert "[900000000] [pixels" in refused[1], refused
  assert f"SERVED {tmp_path / 'ok.png'}" in out    # and serving goes on
  # Decoding the PNG bomb alone would take 1.2 GB; the refused requests add next to nothing.
  assert bombs_kb < small_kb + 300_000, (small_kb, bombs_kb)


def test_header_pixels_of_every_served_format():
  picture = tiny_data.photo(37, 53, 2)
  for fmt, kwargs in (("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                      ("WEBP", {"lossless": True})):
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, fmt, **kwargs)
    assert int(decoding.header_pixels(buffer.getvalue())) == 37 * 53, (fmt, kwargs)
  # TF's GIF decoder reads every frame: an animation counts the pixels of all its frames.
  frames = [Image.fromarray(tiny_data.photo(37, 53, 10 + i)) for i in range(3)]   # all differ
  buffer = io.BytesIO()
  frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
  assert int(decoding.header_pixels(buffer.getvalue())) == 3 * 37 * 53
  assert int(decoding.header_pixels(b"")) == -1
  with pytest.raises(tf.errors.InvalidArgumentError, match="limit of 1000"):
    decoding.decode_to_stored(tiny_data.encode(picture, "PNG"), max_pixels=1000)


def _export_cmd(workdir, base, *extra):
  return [sys.executable, "-m", "keras_alexnet.export", f"--workdir={workdir}",
          f"--export_dir={base}", "--nowarmup", *extra]


def _temps(base):
  return [n for n in os.listdir(base) if n.startswith(".tmp-export-") and n != ".tmp-export-mine"]


def test_a_killed_exports_folder_is_cleaned_and_no_one_elses(tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=4, train=8,
                                 validation=4)
  workdir = tiny_data.make_workdir(str(tmp_path / "run"), data)
  base = tmp_path / "serving"
  os.makedirs(base / ".tmp-export-mine")          # a user's folder with the same prefix
  (base / ".tmp-export-mine" / "notes.txt").write_text("mine")
  process = subprocess.Popen(_export_cmd(workdir, base), cwd=REPO, env=tiny_data.child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + TIMEOUT
  while not _temps(base):
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait(60)
  left = _temps(base)
  assert len(left) == 1 and not export.versions(str(base))
  result = subprocess.run(_export_cmd(workdir, base), cwd=REPO, env=tiny_data.child_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Removing {base / left[0]}, left by an export" in result.stderr
  assert sorted(os.listdir(base)) == [".tmp-export-mine", "1"]
  assert (base / ".tmp-export-mine" / "notes.txt").read_text() == "mine"


def test_an_export_killed_before_its_marker_is_still_known_as_its_own(tmp_path):
  # Killed between making its folder and writing the marker: an empty folder whose name holds
  # this host and the dead pid. A user's empty folder, or one of a live pid, stays.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  host = socket.gethostname()
  ours = tmp_path / f".tmp-export-{host}-{dead.pid}-abcd1234"
  live = tmp_path / f".tmp-export-{host}-{os.getpid()}-abcd1234"
  theirs = tmp_path / ".tmp-export-mine"
  full = tmp_path / f".tmp-export-{host}-{dead.pid}-zzzz9999"
  for folder in (ours, live, theirs, full):
    folder.mkdir()
  (full / "notes.txt").write_text("not empty: not ours to judge by name")
  assert export.clean_killed_exports(str(tmp_path)) == [str(ours)]
  assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (live, theirs, full))


def test_overwrite_removes_only_the_files_the_export_wrote(tmp_path):
  stats = dataset_info.imagenet_statistics()
  base = tmp_path / "serving"
  first = export.export_saved_model(small_net(seed=0), {"classes": CLASSES}, stats, str(base),
                                    version=1, warmup=False)
  (tmp_path / "serving" / "1" / "my_notes.txt").write_text("mine")
  second = export.export_saved_model(small_net(seed=1), {"classes": CLASSES}, stats,
                                     str(base), version=1, overwrite=True, warmup=False)
  assert second == first and not os.path.exists(os.path.join(second, "my_notes.txt"))
  aside = [n for n in os.listdir(base) if n.startswith(".replaced-1-")]
  assert len(aside) == 1 and os.listdir(base / aside[0]) == ["my_notes.txt"]
  # A version folder this project did not write (no file list) is not replaced.
  os.makedirs(base / "5" / "variables")
  (base / "5" / "saved_model.pb").write_bytes(b"someone else's model")
  with pytest.raises(FileExistsError, match="not a version this project exported"):
    export.export_saved_model(small_net(), {"classes": CLASSES}, stats, str(base), version=5,
                              overwrite=True, warmup=False)
  assert (base / "5" / "saved_model.pb").read_bytes() == b"someone else's model"
  assert not [n for n in os.listdir(base) if n.startswith(".tmp-export-")]
