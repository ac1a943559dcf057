"""The packaged ILSVRC-2012 label lists (keras_alexnet/data)."""

import collections
import re

from keras_alexnet import data


def test_classes_are_the_sorted_1000_wnids_with_wordnet_names():
  classes = data.ilsvrc2012_classes()
  wnids = [wnid for wnid, _ in classes]
  assert len(classes) == data.NUM_CLASSES == 1000
  assert wnids == sorted(set(wnids))
  assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
  assert all(name and name == name.strip() for _, name in classes)
  # Label 0 is the tench, as in Caffe, TFDS, Keras and torchvision; 999 toilet tissue.
  assert classes[0] == ("n01440764", "tench, Tinca tinca")
  assert classes[999] == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")


def test_validation_truth_has_50_images_per_class_in_file_order():
  truth = data.ilsvrc2012_validation_wnids()
  assert len(truth) == data.NUM_VALIDATION_IMAGES == 50_000
  counts = collections.Counter(truth)
  assert set(counts) == {wnid for wnid, _ in data.ilsvrc2012_classes()}
  assert set(counts.values()) == {50}
  # ILSVRC2012_val_00000001.JPEG is a sea snake, _00000002 an alp, _00000003 a Shetland
  # sheepdog (the devkit's ground truth, in sorted wnid terms).
  assert truth[:3] == ("n01751748", "n09193705", "n02105855")
