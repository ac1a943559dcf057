"""Table 2's starred rows and Table 1 end to end on tiny data: the recipes' flagfiles, a conv6
net pre-trained on a built fake Fall-2011 release and fine-tuned on another dataset (real
commands), and mixed-architecture ensembles in evaluate."""

import io
import os
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import config as config_lib
from keras_alexnet import data_sources
from keras_alexnet import dataset as dataset_lib
from keras_alexnet import dataset_info
from keras_alexnet import evaluate
from keras_alexnet import files
from keras_alexnet import model as model_lib
from keras_alexnet import preprocessing
from keras_alexnet import workdir as workdir_lib
import tiny_data

REPO = tiny_data.REPO


def _parse(argv):
  from absl import flags   # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_lib.define_train_flags(fv)
  fv(["train", *argv])
  return config_lib.config_from_flags(fv)


def test_recipe_flagfiles_parse(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)   # absl reads the nested flagfiles relative to the working directory
  common = [f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}"]
  pretrain = _parse(["--flagfile=flags/pretrain_fall2011.cfg", *common])
  assert pretrain.model.conv6 and pretrain.model.variant == "paper"
  assert pretrain.train.learning_rate == 0.01 and pretrain.train.strategy == "auto"
  finetune = _parse(["--flagfile=flags/finetune_fall2011_to_2012.cfg",
                     "--init_checkpoint=/runs/fall11-conv6", *common])
  assert finetune.model.conv6 and finetune.train.init_checkpoint == "/runs/fall11-conv6"
  assert finetune.train.learning_rate == 0.001 and finetune.train.epochs == 30
  assert finetune.train.trainable_from is None   # every layer trains
  table1 = _parse(["--flagfile=flags/ilsvrc2010.cfg", *common])
  assert table1 == _parse(["--flagfile=flags/paper.cfg", *common])
  for name in ("pretrain_fall2011.cfg", "finetune_fall2011_to_2012.cfg", "ilsvrc2010.cfg"):
    with open(os.path.join(REPO, "flags", name)) as f:
      header = f.read()
    assert {"pretrain_fall2011.cfg": "16.6%", "finetune_fall2011_to_2012.cfg": "36.7%",
            "ilsvrc2010.cfg": "37.5%"}[name] in header


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _fake_fall2011(path, wnids, per_class):
  rng = np.random.default_rng(0)
  with tarfile.open(path, "w") as outer:
    for k, wnid in enumerate(reversed(wnids)):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(per_class):
          image = tiny_data.make_image(len(wnids) - 1 - k, rng)
          _add(tar, f"{wnid}_{i}.JPEG", tiny_data.encode(image, "JPEG"))
      _add(outer, f"{wnid}.tar", inner.getvalue())


def _run(args, timeout=600):
  result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=tiny_data.child_env(), timeout=timeout, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_pretrain_conv6_on_fall2011_then_finetune(tmp_path):
  """The paper-size conv6 net: two steps on a built fake Fall 2011 release (6 synsets, a
  seeded hold-out), then two fine-tuning steps on a 4-class dataset from that run."""
  wnids = [f"n{7_000_000 + 11 * k:08d}" for k in range(6)]
  _fake_fall2011(tmp_path / "fall11_whole.tar", wnids, per_class=4)
  shards = tmp_path / "fall11-shards"
  _run(["tfrecords.build", f"--input={tmp_path / 'fall11_whole.tar'}", f"--output_dir={shards}",
        "--validation_fraction=0.25", "--train_shards=2", "--validation_shards=1",
        "--num_workers=1", "--noprogress"])
  assert dataset_info.read(str(shards))["splits"]["validation"]["num_examples"] == 6
  small = ["--flagfile=flags/smoke.cfg", "--notiny_model", "--conv6", "--batch_size=4",
           "--epochs=1", "--steps_per_epoch=2", "--eval_steps=1", "--nosummary_images"]
  pretrained = tmp_path / "fall11-conv6"
  _run(["keras_alexnet.train", *small, f"--data_dir={shards}", f"--workdir={pretrained}"])
  source, meta = workdir_lib.load_model(str(pretrained), "latest")
  assert meta["model_config"]["conv6"] and meta["num_classes"] == 6
  assert source.get_layer("fc8").kernel.shape == (4096, 6)

  target = tiny_data.write_dataset(str(tmp_path / "target"), num_classes=4, train=8,
                                   validation=4)
  finetuned = tmp_path / "fall11-conv6-ft"
  _run(["keras_alexnet.train", *small, f"--init_checkpoint={pretrained}", "--seed=1",
        f"--data_dir={target}", f"--workdir={finetuned}"])
  model, meta = workdir_lib.load_model(str(finetuned), "latest")
  assert meta["num_classes"] == 4 and model.get_layer("fc8").kernel.shape == (4096, 4)
  with open(finetuned / "flags.txt") as f:
    assert f"--init_checkpoint={pretrained}" in f.read()
  # Fine-tuning trained conv6 starting from the pre-trained weights (another --seed, so a
  # fresh init would be uncorrelated with them): moved, yet still strongly correlated.
  before = source.get_layer("conv6_a").kernel.numpy().ravel()
  after = model.get_layer("conv6_a").kernel.numpy().ravel()
  assert not np.array_equal(before, after)
  assert np.corrcoef(before, after)[0, 1] > 0.5


def _workdir(workdir, data_dir, conv6, seed, classes=None):
  """A --tiny_model workdir as train leaves it, with or without conv6."""
  info = dataset_info.read(data_dir)
  config = model_lib.ModelConfig(num_classes=info["num_classes"], dropout=0.0, conv6=conv6)
  keras.utils.set_random_seed(seed)
  model = workdir_lib.build_model(config, tiny=True)
  # Larger weights than the init's, so that the members disagree and the softmax is not flat.
  for w in model.trainable_weights:
    w.assign(w * 30.0)
  os.makedirs(workdir)
  files.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), {
      "model_config": workdir_lib.model_config_to_json(config), "tiny_model": True,
      "num_classes": config.num_classes, "classes": classes or info["classes"],
      "data_dir": data_dir, "data": {"label_offset": 0}, "augment": {"mean": "per_pixel"}})
  workdir_lib.save_statistics(workdir, dataset_info.statistics_from_dataset_info(data_dir))
  workdir_lib.CheckpointStore(workdir).save(
      tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(model)), 1, {"step": 1})
  return workdir


def test_mixed_ensemble_is_the_mean_of_its_members_softmax(tmp_path):
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=8, train=8,
                                     validation=40)
  members = [_workdir(str(tmp_path / "plain"), data_dir, conv6=False, seed=1),
             _workdir(str(tmp_path / "conv6"), data_dir, conv6=True, seed=2),
             _workdir(str(tmp_path / "conv6b"), data_dir, conv6=True, seed=3)]
  results = evaluate.evaluate(config_lib.EvalConfig(workdirs=tuple(members),
                                                    views=("center",), batch_size=16))
  # The same, by hand: each member's softmax over the validation split, averaged.
  probabilities, labels = [], None
  for path in members:
    model, _ = workdir_lib.load_model(path)
    stats = workdir_lib.load_statistics(path)
    rows, labels = [], []
    for images, batch_labels in dataset_lib.create_split(data_sources.DataConfig(data_dir),
                                                         train=False, batch_size=16):
      crops = preprocessing.center_crop(images, stats)
      rows.append(tf.nn.softmax(model(crops, training=False)).numpy())
      labels.append(batch_labels.numpy())
    probabilities.append(np.concatenate(rows))
    labels = np.concatenate(labels)
  mean = np.mean(probabilities, axis=0)
  ranks = np.sum(mean > mean[np.arange(len(labels)), labels][:, None], axis=1)
  expected = {"top1_error": float(np.mean(ranks >= 1)), "top5_error": float(np.mean(ranks >= 5))}
  assert results["ensemble"]["members"] == 3
  assert results["ensemble"]["center"] == pytest.approx(expected)
  # It is the ensemble, not a member: its top-1 differs from each member's on this data.
  member_top1 = [float(np.mean(np.argmax(p, 1) != labels)) for p in probabilities]
  assert [m["center"]["top1_error"] for m in results["models"]] == pytest.approx(member_top1)
  table = evaluate.format_table(results)
  for row in ("1 CNN (", "5 CNNs (", "1 CNN* (", "7 CNNs* (", "Table 1 CNN (ILSVRC-2010 test)"):
    assert row in table
  assert "39.0%" in table and "36.7%" in table and "15.4%" in table


def test_ensemble_over_different_class_sets_is_refused(tmp_path):
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=4, train=4,
                                     validation=4)
  other = [[f"n{k + 50:08d}", f"other {k}"] for k in range(4)]
  a = _workdir(str(tmp_path / "a"), data_dir, conv6=False, seed=1)
  b = _workdir(str(tmp_path / "b"), data_dir, conv6=True, seed=2, classes=other)
  with pytest.raises(ValueError, match=r"An ensemble needs models over the same classes in "
                     r"the same order; .*b has class 0 = 'n00000050' where .*a has "
                     r"'n00000000'"):
    evaluate.evaluate(config_lib.EvalConfig(workdirs=(a, b), views=("center",)))


def test_evaluate_split_test_without_test_shards(tmp_path):
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), num_classes=4, train=4,
                                     validation=4)
  run = _workdir(str(tmp_path / "a"), data_dir, conv6=True, seed=1)
  with pytest.raises(FileNotFoundError, match=r"holds no test shards; build them with .* \(a "
                     r"test split: --layout=ilsvrc2010\)"):
    evaluate.evaluate(config_lib.EvalConfig(workdirs=(run,), split="test"))
