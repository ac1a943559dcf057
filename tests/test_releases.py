"""Other releases in the builder (tfrecords/releases.py): a fake Fall-2011 tar with a seeded
per-class hold-out, a fake ILSVRC-2010 layout with devkit-style ground truth and a test split,
the 21,841-class scale, and the bad inputs."""

import collections
import io
import os
import random
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import features
from tfrecords import build
from tfrecords import releases
from tfrecords import sources
from tfrecords import statistics
from tfrecords.sources import InputError, Item, Source
import tiny_data


def _jpeg(seed, size=(40, 52)):
  return tiny_data.encode(tiny_data.photo(*size, seed), "JPEG")


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _tar_bytes(members):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    for name, data in members:
      _add(tar, name, data)
  return buffer.getvalue()


def _read_shards(data_dir, split):
  """{filename: (label, synset)} of every record of `split`."""
  found = {}
  paths = sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{split}-*-of-*")))
  for raw in tf.data.TFRecordDataset(paths).as_numpy_iterator():
    f = tf.train.Example.FromString(raw).features.feature
    found[f[features.FILENAME].bytes_list.value[0].decode()] = (
        f[features.LABEL].int64_list.value[0], f[features.SYNSET].bytes_list.value[0].decode())
  return found


def _build(args, timeout=300):
  return subprocess.run([sys.executable, "-m", "tfrecords.build", "--num_workers=1",
                         "--noprogress", *args], capture_output=True, text=True,
                        env=tiny_data.child_env(), timeout=timeout)


# --- Fall 2011 ----------------------------------------------------------------------------------

WNIDS = [f"n{9_000_000 + 37 * k:08d}" for k in range(30)]     # dozens of synsets
COUNTS = {w: 3 + k % 6 for k, w in enumerate(WNIDS)}            # 3..8 images each


@pytest.fixture(scope="module")
def fall2011(tmp_path_factory):
  """fall11_whole.tar: per-synset tars in shuffled order, each with shuffled members."""
  root = tmp_path_factory.mktemp("fall11")
  rng = random.Random(3)
  order = list(WNIDS)
  rng.shuffle(order)
  with tarfile.open(root / releases.FALL2011_TAR, "w") as outer:
    for k, wnid in enumerate(order):
      members = [(f"{wnid}_{i}.JPEG", _jpeg(100 * k + i)) for i in range(COUNTS[wnid])]
      rng.shuffle(members)
      _add(outer, f"{wnid}.tar", _tar_bytes(members))
    _add(outer, "README", b"not a synset tar")
  # words.txt lists more synsets than the release holds, and lacks one of them.
  words = root / "words.txt"
  words.write_text("".join(f"{w}\tthing number {k}\n" for k, w in enumerate(WNIDS[1:]))
                   + "n00000001\tentity\n")
  return root, words


def test_fall2011_tar_with_validation_fraction(fall2011, tmp_path):
  root, words = fall2011
  out = tmp_path / "shards"
  result = _build([f"--input={root}", f"--output_dir={out}", f"--classes_file={words}",
                   "--validation_fraction=0.3", "--train_shards=3", "--validation_shards=2",
                   "--seed=5"])
  assert result.returncode == 0, result.stderr[-3000:]
  info = dataset_info.read(str(out))
  assert info["build"]["layout"] == "fall2011" and info["num_classes"] == len(WNIDS)
  assert [c[0] for c in info["classes"]] == sorted(WNIDS)        # labels = sorted wnids
  names = dict(info["classes"])
  assert names[WNIDS[0]] == WNIDS[0]                             # not in words.txt: the wnid
  assert names[WNIDS[3]] == "thing number 2"
  train, validation = _read_shards(str(out), "train"), _read_shards(str(out), "validation")
  assert not set(train) & set(validation)
  for split in (train, validation):
    for name, (label, synset) in split.items():
      assert name.startswith(synset) and info["classes"][label][0] == synset
  held = collections.Counter(s for _, s in validation.values())
  kept = collections.Counter(s for _, s in train.values())
  for wnid, count in COUNTS.items():
    # 0.3 of 3..8 rounded half up: 1, 1, 2, 2, 2, 2 (3 -> 0.9 -> 1, 5 -> 1.5 -> 2, 8 -> 2.4 -> 2)
    expected = int(np.floor(0.3 * count + 0.5))
    assert held[wnid] == expected, wnid
    assert kept[wnid] == count - expected, wnid
  assert info["splits"]["validation"]["num_examples"] == sum(held.values())
  skipped = (out / build.SKIPPED_FILENAME).read_text()
  assert "README" in skipped


def test_hold_out_is_seeded_and_independent_of_listing_order(fall2011):
  root, _ = fall2011
  source = releases.fall2011_source(str(root / releases.FALL2011_TAR))
  a = releases.hold_out(source, 0.3, seed=1)
  shuffled = list(source.splits["train"])
  random.Random(9).shuffle(shuffled)
  b = releases.hold_out(Source(source.layout, source.classes, {"train": shuffled},
                               source.rejected), 0.3, seed=1)
  c = releases.hold_out(source, 0.3, seed=2)
  names = lambda s: [i.filename for i in s.splits["validation"]]   # noqa: E731
  assert names(a) == names(b) and names(a) != names(c)


def test_fall2011_extracted_folders(tmp_path):
  root = tmp_path / "fall11"
  for k, wnid in enumerate(WNIDS[:4]):
    (root / wnid).mkdir(parents=True)
    for i in range(2):
      (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(k * 10 + i))
  assert releases.detect(str(root)) == "fall2011"
  source = releases.find_source(str(root), validation_fraction=0.5)
  assert [c[0] for c in source.classes] == sorted(WNIDS[:4])
  assert len(source.splits["train"]) == len(source.splits["validation"]) == 4
  # Folders of <wnid>.tar (fall11_whole.tar extracted one level) work the same way.
  tars = tmp_path / "tars"
  tars.mkdir()
  for wnid in WNIDS[:3]:
    (tars / f"{wnid}.tar").write_bytes(_tar_bytes([(f"{wnid}_0.JPEG", _jpeg(1))]))
  source = releases.find_source(str(tars))
  assert [i.filename for i in source.splits["train"]] == [f"{w}_0.JPEG" for w in
                                                            sorted(WNIDS[:3])]
  assert sources.read_bytes(source.splits["train"][0])[:2] == b"\xff\xd8"   # a JPEG's bytes


def test_21841_classes_label_map_shards_and_statistics(tmp_path):
  """The Fall 2011 release's 21,841 synsets: the label map, the hold-out and the shard plan
  at that class count (two images a class stand in for its ~700), and statistics whose size
  does not grow with the classes."""
  n = 21_841
  wnids = [f"n{10_000_000 + 7 * k:08d}" for k in range(n)]
  words = tmp_path / "words.txt"
  words.write_text("".join(f"{w}\tsynset {k}\n" for k, w in enumerate(reversed(wnids))))
  names = dict(sources.read_classes_file(str(words)))
  classes = tuple((w, names[w]) for w in sorted(wnids))
  items = [Item(f"{w}_{i}.JPEG", label, "/nonexistent", 0, 1)
           for label, (w, _) in enumerate(classes) for i in range(4)]
  source = releases.hold_out(Source("fall2011", classes, {"train": items}, {"train": []}),
                             0.25, seed=0)
  assert len(source.splits["validation"]) == n and len(source.splits["train"]) == 3 * n
  assert {i.label for i in source.splits["validation"]} == set(range(n))
  config = build.BuildConfig(input=str(tmp_path), output_dir=str(tmp_path / "out"),
                             train_shards=1024, validation_shards=128)
  counts = build._shard_counts(source, config, writers=1)
  tasks = build._shards(source, config, counts)
  assert [sum(t.split == s for t in tasks) for s in ("train", "validation")] == [1024, 128]
  assert sum(len(t.items) for t in tasks) == 4 * n
  assert build._build_record(source, config, counts)["num_shards"] == {"train": 1024,
                                                                       "validation": 128}
  # The statistics are a mean image and RGB moments: the same bytes for any class count.
  stats = statistics.PixelStatistics(256)
  stats.add(np.zeros((256, 256, 3), np.uint8))
  assert sum(a.nbytes for a in stats.arrays().values()) < 4 * 256 * 256 * 3 * 8


def test_validation_fraction_bad_values(tmp_path):
  for bad in ("0", "1", "1.5", "-0.1"):
    result = _build([f"--input={tmp_path}", f"--output_dir={tmp_path / 'out'}",
                     f"--validation_fraction={bad}"], timeout=120)
    assert result.returncode != 0
    assert f"--validation_fraction={float(bad)} must be in (0, 1)" in result.stderr
  assert not (tmp_path / "out").exists()
  # A class-folder dataset with its own validation split: refused, naming it.
  for split in ("train", "val"):
    (tmp_path / "data" / split / "cat").mkdir(parents=True)
    (tmp_path / "data" / split / "cat" / "a.jpg").write_bytes(_jpeg(0))
  with pytest.raises(InputError, match=r"--validation_fraction=0.2 with a dataset that has a "
                     r"validation split \(1 images, class_folders layout\)"):
    releases.find_source(str(tmp_path / "data"), validation_fraction=0.2)
  # Without val/, class folders get their hold-out too.
  os.rename(tmp_path / "data" / "val", tmp_path / "val-elsewhere")
  (tmp_path / "data" / "train" / "cat" / "b.jpg").write_bytes(_jpeg(1))
  source = releases.find_source(str(tmp_path / "data"), validation_fraction=0.5)
  assert len(source.splits["validation"]) == len(source.splits["train"]) == 1


# --- ILSVRC-2010 --------------------------------------------------------------------------------

# The devkit's ILSVRC2010_IDs are not in sorted wnid order (as in 2012): ID k -> META[k - 1].
META = ["n03000005", "n01000001", "n04000007", "n02000003", "n01500002"]
SORTED = sorted(META)


def _ilsvrc2010(root, val_ids, test_ids, meta="txt"):
  root.mkdir(parents=True, exist_ok=True)
  with tarfile.open(root / releases.ILSVRC2010_TARS["train"], "w") as outer:
    for k, wnid in enumerate(reversed(META)):
      _add(outer, f"{wnid}.tar", _tar_bytes([(f"{wnid}_{i}.JPEG", _jpeg(k * 10 + i))
                                             for i in range(2)]))
  for split, ids, stem in (("validation", val_ids, "val"), ("test", test_ids, "test")):
    names = [f"ILSVRC2010_{stem}_{i:08d}.JPEG" for i in range(1, len(ids) + 1)]
    order = list(range(len(names)))
    random.Random(1).shuffle(order)   # tar members unsorted; labels follow sorted names
    (root / releases.ILSVRC2010_TARS[split]).write_bytes(
        _tar_bytes([(f"val/{names[i]}" if stem == "val" else names[i], _jpeg(500 + i))
                    for i in order]))
    data = root / "devkit-1.0" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / releases.ILSVRC2010_GROUND_TRUTH[split]).write_text(
        "".join(f"{i}\n" for i in ids))
  if meta == "txt":
    (root / "devkit-1.0" / "data" / "meta.txt").write_text(
        "".join(f"{k} {w} words of {w}\n" for k, w in enumerate(META, 1)))
  else:
    from scipy import io as scipy_io   # pylint: disable=g-import-not-at-top
    dtype = [("ILSVRC2010_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    entries = [(k, w, f"words of {w}", 0) for k, w in enumerate(META, 1)]
    entries.append((len(META) + 1, "n09999999", "an ancestor synset", 3))   # high level
    scipy_io.savemat(str(root / "devkit-1.0" / "data" / "meta.mat"),
                     {"synsets": np.array(entries, dtype=dtype)})
  return root


VAL_IDS = [3, 1, 5, 2, 4, 1, 3, 2]
TEST_IDS = [2, 2, 4, 5, 1, 3]


@pytest.fixture(scope="module")
def ilsvrc2010_shards(tmp_path_factory):
  root = _ilsvrc2010(tmp_path_factory.mktemp("ilsvrc2010") / "in", VAL_IDS, TEST_IDS)
  out = tmp_path_factory.mktemp("ilsvrc2010") / "shards"
  result = _build([f"--input={root}", f"--output_dir={out}", "--train_shards=2",
                   "--validation_shards=2", "--test_shards=1"])
  assert result.returncode == 0, result.stderr[-3000:]
  return str(out)


def test_ilsvrc2010_labels_of_validation_and_test(ilsvrc2010_shards):
  info = dataset_info.read(ilsvrc2010_shards)
  assert info["build"]["layout"] == "ilsvrc2010"
  assert [c for c in info["classes"]] == [[w, f"words of {w}"] for w in SORTED]
  assert {s: info["splits"][s]["num_examples"] for s in info["splits"]} == {
      "train": 10, "validation": 8, "test": 6}
  for split, ids, stem in (("validation", VAL_IDS, "val"), ("test", TEST_IDS, "test")):
    found = _read_shards(ilsvrc2010_shards, split)
    expected = {f"ILSVRC2010_{stem}_{i:08d}.JPEG": SORTED.index(META[k - 1])
                for i, k in enumerate(ids, 1)}
    assert {n: label for n, (label, _) in found.items()} == expected
    assert all(synset == SORTED[label] for label, synset in found.values())
  train = _read_shards(ilsvrc2010_shards, "train")
  assert all(name.startswith(SORTED[label]) for name, (label, _) in train.items())


def test_ilsvrc2010_meta_mat(tmp_path):
  pytest.importorskip("scipy")
  root = _ilsvrc2010(tmp_path / "in", VAL_IDS, TEST_IDS, meta="mat")
  source = releases.find_source(str(root))
  assert source.classes == tuple((w, f"words of {w}") for w in SORTED)   # ancestor left out
  labels = {i.filename: i.label for i in source.splits["test"]}
  assert labels["ILSVRC2010_test_00000004.JPEG"] == SORTED.index(META[5 - 1])


def test_evaluate_split_test(ilsvrc2010_shards, tmp_path):
  from keras_alexnet import config as config_lib   # pylint: disable=g-import-not-at-top
  from keras_alexnet import evaluate   # pylint: disable=g-import-not-at-top
  workdir = tiny_data.make_workdir(str(tmp_path / "run"), ilsvrc2010_shards)
  results = evaluate.evaluate(config_lib.EvalConfig(workdirs=(workdir,), split="test",
                                                    views=("center",), batch_size=4))
  assert results["split"] == "test" and results["examples"] == 6
  table = evaluate.format_table(results)
  assert "(6 test images)" in table and "Table 1 CNN (ILSVRC-2010 test)" in table
  assert "37.5%" in table and "17.0%" in table


@pytest.mark.parametrize("case, message", [
    ("short_truth", r"ILSVRC2010_validation_ground_truth.txt has 7 labels but the validation "
                    r"tar holds 8 images.*does not match the release"),
    ("bad_id", r"ILSVRC2010_test_ground_truth.txt:3: '9' is not an ILSVRC2010_ID of the meta "
               r"file \(1..5\)"),
    ("2012_names", r"holds 8 images not named like ILSVRC2010_val_.*'ILSVRC2012_val_00000001"
                   r".JPEG'.*does not match the release"),
    ("unknown_synset", r"class tars of 1 synsets that .*meta.txt does not list, e.g. n07777777"),
    ("meta_gap", r"meta.txt: the ILSVRC2010_IDs of the 5 synsets are not 1..5"),
    ("no_test_truth", r"ILSVRC2010_images_test.tar needs its labels: "
                      r"ILSVRC2010_test_ground_truth.txt .*or --test_labels_file"),
    ("fraction", r"--validation_fraction=0.1 with a dataset that has a validation split"),
])
def test_ilsvrc2010_devkit_that_does_not_match(tmp_path, case, message):
  root = _ilsvrc2010(tmp_path / "in", VAL_IDS,
                     [2, 2, 9, 5, 1, 3] if case == "bad_id" else TEST_IDS)
  data = root / "devkit-1.0" / "data"
  if case == "short_truth":
    (data / releases.ILSVRC2010_GROUND_TRUTH["validation"]).write_text(
        "".join(f"{i}\n" for i in VAL_IDS[:-1]))
  elif case == "2012_names":
    (root / releases.ILSVRC2010_TARS["validation"]).write_bytes(_tar_bytes(
        [(f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(i)) for i in range(1, 9)]))
  elif case == "unknown_synset":
    with tarfile.open(root / releases.ILSVRC2010_TARS["train"], "a") as outer:
      _add(outer, "n07777777.tar", _tar_bytes([("n07777777_0.JPEG", _jpeg(0))]))
  elif case == "meta_gap":
    (data / "meta.txt").write_text("".join(f"{k} {w}\n" for k, w in
                                           zip((1, 2, 3, 4, 7), META)))
  elif case == "no_test_truth":
    os.remove(data / releases.ILSVRC2010_GROUND_TRUTH["test"])
  out = tmp_path / "out"
  result = _build([f"--input={root}", f"--output_dir={out}", "--train_shards=1",
                   "--validation_shards=1"]
                  + (["--validation_fraction=0.1"] if case == "fraction" else []))
  assert result.returncode != 0
  assert __import__("re").search(message, result.stderr), result.stderr[-2000:]
  assert not out.exists()   # refused before anything was written


def test_ilsvrc2010_devkit_elsewhere_and_other_meta_forms(tmp_path):
  pytest.importorskip("scipy")
  from scipy import io as scipy_io   # pylint: disable=g-import-not-at-top
  root = _ilsvrc2010(tmp_path / "in", VAL_IDS, TEST_IDS)
  devkit = tmp_path / "ILSVRC2010_devkit-1.0"
  os.rename(root / "devkit-1.0", devkit)
  os.remove(devkit / "data" / "meta.txt")
  # meta.mat as savemat makes it from a dict of lists: one struct of arrays.
  scipy_io.savemat(str(devkit / "data" / "meta.mat"), {"synsets": {
      "ILSVRC2010_ID": np.arange(1, 6), "WNID": np.array(META, dtype=object),
      "words": np.array([f"words of {w}" for w in META], dtype=object),
      "num_children": np.zeros(5)}})
  with pytest.raises(InputError, match=r"has no devkit meta file"):
    releases.find_source(str(root))
  source = releases.find_source(str(root), devkit_dir=str(devkit))
  assert source.classes == tuple((w, f"words of {w}") for w in SORTED)
  labels = {i.filename: i.label for i in source.splits["validation"]}
  assert labels["ILSVRC2010_val_00000003.JPEG"] == SORTED.index(META[5 - 1])


def test_fall2011_tar_of_another_name_and_a_words_file_with_spaces(tmp_path):
  root = tmp_path / "in"
  root.mkdir()
  with tarfile.open(root / "imagenet_fall2011.tar", "w") as outer:
    for k, wnid in enumerate(WNIDS[:3]):
      _add(outer, f"{wnid}.tar", _tar_bytes([(f"{wnid}_0.JPEG", _jpeg(k))]))
  words = tmp_path / "words.txt"
  words.write_text(f"{WNIDS[1]} a thing, another name\n")
  assert releases.detect(str(root)) == "fall2011"
  source = releases.find_source(str(root), classes_file=str(words))
  assert source.classes == ((WNIDS[0], WNIDS[0]), (WNIDS[1], "a thing, another name"),
                            (WNIDS[2], WNIDS[2]))
  words.write_text("entity\n")
  with pytest.raises(InputError, match=r"words.txt:1: expected 'wnid<TAB>names'"):
    releases.find_source(str(root), classes_file=str(words))


def test_ilsvrc2010_patch_images_and_gzipped_jpegs(tmp_path):
  import gzip   # pylint: disable=g-import-not-at-top
  root = _ilsvrc2010(tmp_path / "in", VAL_IDS, TEST_IDS)
  wnid = META[0]
  original = _jpeg(7)
  with tarfile.open(root / releases.ILSVRC2010_TARS["train"], "a") as outer:
    # A synset whose image is stored as a gzip file of the JPEG, as some 2010 images are.
    _add(outer, "n05555555.tar", _tar_bytes([("n05555555_0.JPEG", gzip.compress(original))]))
  (root / "devkit-1.0" / "data" / "meta.txt").write_text(
      "".join(f"{k} {w} words of {w}\n" for k, w in enumerate(META + ["n05555555"], 1)))
  patch = {f"patch_images/train/{wnid}_1.JPEG": _jpeg(901),
           "patch_images/val/ILSVRC2010_val_00000002.JPEG": _jpeg(902),
           "patch_images/test/ILSVRC2010_test_00000099.JPEG": _jpeg(903)}   # no such image
  (root / releases.ILSVRC2010_PATCH_TAR).write_bytes(_tar_bytes(list(patch.items())))
  source = releases.find_source(str(root))
  train = {i.filename: i for i in source.splits["train"]}
  assert sources.read_bytes(train[f"{wnid}_1.JPEG"]) == patch[f"patch_images/train/{wnid}_1.JPEG"]
  assert sources.read_bytes(train[f"{wnid}_0.JPEG"])[:2] == b"\xff\xd8"   # not patched
  assert sources.read_bytes(train["n05555555_0.JPEG"]) == original          # gunzipped
  validation = {i.filename: i for i in source.splits["validation"]}
  assert (sources.read_bytes(validation["ILSVRC2010_val_00000002.JPEG"])
          == patch["patch_images/val/ILSVRC2010_val_00000002.JPEG"])
  assert source.rejected["test"] == [("ILSVRC2010_test_00000099.JPEG",
                                      "a replacement in patch_images.tar for no test image")]
