"""tfrecords.sources: which layout a folder holds, and what is refused."""

import os

import pytest

from tfrecords import sources


def _touch(root, *names):
  for name in names:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(b"\xff\xd8")


def test_layouts_are_detected_from_what_the_folder_holds(tmp_path):
  _touch(tmp_path / "a", "train/n01440764/n01440764_1.JPEG")
  assert sources.detect_layout(str(tmp_path / "a")) == "ilsvrc_folders"
  _touch(tmp_path / "b", "val/ILSVRC2012_val_00000001.JPEG")
  assert sources.detect_layout(str(tmp_path / "b")) == "ilsvrc_folders"
  _touch(tmp_path / "c", "train/cats/1.jpg", "validation/cats/2.png")
  assert sources.detect_layout(str(tmp_path / "c")) == "class_folders"
  _touch(tmp_path / "d", "ILSVRC2012_img_val.tar")
  assert sources.detect_layout(str(tmp_path / "d")) == "ilsvrc_tars"


def test_packaged_validation_labels_follow_the_file_number(tmp_path):
  _touch(tmp_path, "val/ILSVRC2012_val_00000003.JPEG", "val/ILSVRC2012_val_00050000.JPEG")
  source = sources.find_source(str(tmp_path))
  wnids = [source.classes[item.label][0] for item in source.splits["validation"]]
  # The ground truth of images 3 and 50,000: a Shetland sheepdog and a llama.
  assert wnids == ["n02105855", "n02437616"]


def test_forcing_class_folders_gives_a_compact_label_space(tmp_path):
  _touch(tmp_path, "train/n01443537/a.JPEG", "train/n01440764/b.JPEG")
  source = sources.find_source(str(tmp_path), layout="class_folders")
  assert source.classes == (("n01440764", "tench, Tinca tinca"),
                            ("n01443537", "goldfish, Carassius auratus"))
  assert [(i.filename, i.label) for i in source.splits["train"]] == [
      ("n01440764/b.JPEG", 0), ("n01443537/a.JPEG", 1)]


@pytest.mark.parametrize("files, layout, message", [
    (("train/cats/1.jpg", "val/cats/2.jpg", "validation/cats/3.jpg"), "auto", "keep one"),
    (("train/cats/1.jpg",), "ilsvrc_tars", "holds the class_folders layout"),
    (("train/1.jpg", "train/cats/2.jpg"), "auto", "outside class folders"),
    (("train/n01440764/1.JPEG", "train/cats/2.jpg"), "ilsvrc_folders", "not an ILSVRC-2012"),
    (("train/a/x.jpg", "train/b/x/../x.jpg"), "auto", None),
])
def test_inputs_that_cannot_be_built_are_refused(tmp_path, files, layout, message):
  _touch(tmp_path, *files)
  if message is None:
    assert sources.find_source(str(tmp_path), layout=layout).splits["train"]
    return
  with pytest.raises(sources.InputError, match=message):
    sources.find_source(str(tmp_path), layout=layout)


def test_integer_validation_labels_are_refused_with_the_reason(tmp_path):
  _touch(tmp_path, "train/n01440764/1.JPEG", "val/ILSVRC2012_val_00000001.JPEG")
  labels = tmp_path / "ground_truth.txt"
  labels.write_text("490\n")
  with pytest.raises(sources.InputError, match="devkit's 1-based"):
    sources.find_source(str(tmp_path), validation_labels_file=str(labels))
