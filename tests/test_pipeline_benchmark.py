"""keras_alexnet.pipeline_benchmark on a few images: the figures are real measurements (not
timed here: speed targets belong to the benchmark command, not to tests)."""

import numpy as np
import pytest

from keras_alexnet import data_sources
from keras_alexnet import dataset
from keras_alexnet import pil_loader
from keras_alexnet import pipeline_benchmark as pb


def test_records_are_what_the_builder_writes(tmp_path):
  data_dir = pb.write_records(str(tmp_path), num_images=10, num_shards=3)
  meta = data_sources.dataset_metadata(data_sources.DataConfig(data_dir))
  assert meta["num_examples"]["train"] == 10 and meta["image_size"] == 256
  images, labels = next(iter(dataset.create_split(data_sources.DataConfig(data_dir), True, 10)))
  assert images.shape == (10, 256, 256, 3)
  # Photo-like: smooth, so neighbouring pixels are close (a codec's easy case, unlike noise).
  steps = np.abs(np.diff(images.numpy().astype(int), axis=2)).mean()
  assert 1 < steps < 20


def test_figures_are_measured(tmp_path):
  data_dir = pb.write_records(str(tmp_path), num_images=16, num_shards=2)
  figures = pb.cpu_figures(data_sources.DataConfig(data_dir), batch_size=8, repeats=1)
  assert figures.bound > 0 and figures.pipeline > 0 and 0 < figures.ratio < 10
  assert figures.pipeline_per_core > 0 and 0 < figures.ratio_per_core < 10
  assert pb.setup_seconds(data_sources.DataConfig(data_dir), 8, repeats=1) > 0
  assert pb.augment_rate(4, jit_compile=False, repeats=1) > 0
  assert pb.map_fn_crop_rate(4, repeats=1) > 0


@pytest.mark.parametrize("torch", [True, False], ids=["with_torch", "without_torch"])
def test_rows_on_existing_shards(tmp_path, monkeypatch, torch):
  if torch:
    pytest.importorskip("torch")
  else:   # as on a machine without torch (it is a test extra, not a dependency)
    monkeypatch.setattr(pil_loader, "torch_available", lambda: False)
  data_dir = pb.write_records(str(tmp_path), num_images=16, num_shards=2)
  table = pb.rows(batch_size=4, data_dir=data_dir, augment_batch_size=2, repeats=1)
  assert [row.name for row in table][:2] == ["decode_jpeg alone (bound)",
                                             "cpu pipeline -> uint8 batches"]
  rates = [row for row in table if not row.name.startswith("target")]
  # The DataLoader comparator's two rows where torch is installed, else one saying it is not.
  if torch:
    assert len(rates) == 14 and all(row.images_per_second > 0 for row in rates)
  else:
    unmeasured = [r.detail for r in rates if not r.images_per_second > 0]
    assert len(rates) == 13 and unmeasured == ["torch not installed"]
  assert all(row.ratio > 0 for row in table if row.bound_name)
  targets = [row.detail for row in table if row.name.startswith("target")]
  assert len(targets) == 3 and all(t.endswith((": met", ": NOT met")) for t in targets)
