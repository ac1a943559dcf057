"""The export is what TF Serving needs: signatures, numbers, warm-up, versions, no XLA.

One export of the paper's network (10 classes, placed over the conftest's /cpu:0 and /cpu:1
like the paper's two GPUs) is shared by the tests that need the real net; the tests of
versioning, crashes and the 10-view average use a small conv net, which exercises the same
code in a fraction of the time.
"""

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from keras_alexnet import data_sources
from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import export
from keras_alexnet import preprocessing
from keras_alexnet.model import alexnet
from tiny_data import child_env, encode, photo  # tests/tiny_data.py

NUM_CLASSES = 10
CLASSES = [[f"n{i:08d}", f"class number {i}"] for i in range(NUM_CLASSES)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = child_env()


@pytest.fixture(scope="module")
def images():
  """Real encoded images of the kinds clients send: sizes, aspect ratios and formats."""
  return {
      "jpeg": encode(photo(300, 400, 0), "JPEG"),
      "png": encode(photo(180, 120, 1), "PNG"),              # portrait, upscaled to 256
      "gray_png": encode(photo(256, 300, 2)[..., 0], "PNG"),
      "gray_jpeg": encode(photo(400, 260, 3), "JPEG", mode="L"),
      "cmyk_jpeg": encode(photo(280, 280, 4), "JPEG", mode="CMYK"),
  }


@pytest.fixture(scope="module")
def stats():
  """Statistics with a per-pixel mean image that differs from pixel to pixel, so a crop taken
  at the wrong place or a missing mean would show."""
  rng = np.random.default_rng(7)
  mean_image = rng.uniform(60, 180, (decoding.STORED_SIZE, decoding.STORED_SIZE, 3))
  published = dataset_info.imagenet_statistics()
  return dataset_info.Statistics(
      mean_image=mean_image.astype(np.float32), mean_rgb=mean_image.mean(axis=(0, 1)),
      eigenvalues=published.eigenvalues, eigenvectors=published.eigenvectors, source="test")


@pytest.fixture(scope="module")
def paper_net():
  """The paper's net, placed over two devices; He init, and fc8 scaled down, so that the
  softmax is not saturated and the top 5 depend on the image."""
  model = alexnet(num_classes=NUM_CLASSES, init="he", devices=("/cpu:0", "/cpu:1"))
  fc8 = model.get_layer("fc8")
  fc8.kernel.assign(fc8.kernel * 0.1)
  return model


@pytest.fixture(scope="module")
def exported(paper_net, stats, tmp_path_factory):
  base = str(tmp_path_factory.mktemp("export"))
  return export.export_saved_model(paper_net, {"classes": CLASSES}, stats, base)


@pytest.fixture(scope="module")
def loaded(exported):
  return tf.saved_model.load(exported)


def small_net(num_classes=NUM_CLASSES, seed=0):
  """A small conv net that sees where things are (so crops and mirrors change its output)."""
  return keras.Sequential([
      keras.Input((224, 224, 3)),
      keras.layers.Conv2D(4, 16, strides=16, activation="relu",
                          kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
      keras.layers.Flatten(),
      keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(
          stddev=0.01, seed=seed)),
  ], name="small_net")


def keras_probabilities(model, crops):
  return tf.nn.softmax(model(crops, training=False)).numpy()


def eval_crops(image_bytes, stats):
  """What `evaluate` feeds the model: the stored 256x256 images, centre-cropped in a batch."""
  stored = tf.stack([decoding.decode_to_stored(b) for b in image_bytes])
  return preprocessing.center_crop(stored, stats)


# TensorFlow's own CLI, through the running interpreter: on a fresh machine only this
# interpreter's environment has TensorFlow, and its bin folder need not be on PATH.
SAVED_MODEL_CLI = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def run(cmd, **kwargs):
  return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, **kwargs)


# --- The real network, in a fresh process and through saved_model_cli ------------------------

FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2], allow_pickle=True)
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(list(inputs["bytes"])))
    by_crops = loaded.signatures["preprocessed"](images=tf.constant(inputs["crops"]))
    np.savez(sys.argv[3], **{f"bytes_{k}": v.numpy() for k, v in by_bytes.items()},
             **{f"crops_{k}": v.numpy() for k, v in by_crops.items()})
""")


def test_fresh_process_matches_keras_and_evaluate(exported, paper_net, images, stats, tmp_path):
  image_bytes = list(images.values())
  crops = eval_crops(image_bytes, stats).numpy()
  np.savez(tmp_path / "inputs.npz", bytes=np.array(image_bytes, dtype=object), crops=crops)
  script = tmp_path / "fresh.py"
  script.write_text(FRESH_PROCESS)
  result = run([sys.executable, str(script), exported, str(tmp_path / "inputs.npz"),
                str(tmp_path / "out.npz")])
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / "out.npz", allow_pickle=True)

  expected = keras_probabilities(paper_net, crops)
  assert out["crops_probabilities"].dtype == np.float32
  np.testing.assert_allclose(out["crops_probabilities"], expected, rtol=0, atol=1e-5)
  # Bytes in: the in-graph decode and crop equal evaluate's, so the same numbers come out.
  np.testing.assert_allclose(out["bytes_probabilities"], expected, rtol=0, atol=1e-5)
  top5 = np.argsort(-expected, axis=1)[:, :5]
  np.testing.assert_array_equal(out["bytes_top5_classes"], top5)
  np.testing.assert_allclose(out["bytes_top5_probabilities"],
                             np.take_along_axis(expected, top5, axis=1), atol=1e-5)
  names = np.array([text for _, text in CLASSES])
  wnids = np.array([wnid for wnid, _ in CLASSES])
  np.testing.assert_array_equal(out["bytes_top5_names"].astype(str), names[top5])
  np.testing.assert_array_equal(out["bytes_top5_wnids"].astype(str), wnids[top5])
  # The net is not constant: different images get different answers.
  assert len({tuple(row) for row in top5}) > 1


def test_saved_model_cli_show_lists_the_contract(exported):
  result = run(SAVED_MODEL_CLI + ["show", "--all", "--dir", exported])
  assert result.returncode == 0, result.stderr[-3000:]
  signatures = {}
  for block in re.split(r"\nsignature_def\['", result.stdout)[1:]:
    name = block.split("'", 1)[0]
    tensors = re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+"
                         r"shape: \(([^)]*)\)", block)
    signatures[name] = {(kind, key): (dtype, shape) for kind, key, dtype, shape in tensors}
  top5 = "-1, 5"
  outputs = {("outputs", "probabilities"): ("DT_FLOAT", f"-1, {NUM_CLASSES}"),
             ("outputs", "top5_classes"): ("DT_INT32", top5),
             ("outputs", "top5_probabilities"): ("DT_FLOAT", top5),
             ("outputs", "top5_wnids"): ("DT_STRING", top5),
             ("outputs", "top5_names"): ("DT_STRING", top5)}
  assert signatures["serving_default"] == {("inputs", "image_bytes"): ("DT_STRING", "-1"),
                                           **outputs}
  assert signatures["preprocessed"] == {
      ("inputs", "images"): ("DT_FLOAT", "-1, 224, 224, 3"), **outputs}
  assert "Method name is: tensorflow/serving/predict" in result.stdout


def test_saved_model_cli_run_on_a_jpeg(exported, loaded, images, tmp_path):
  # saved_model_cli runs the graph the TF1 way (a Session over the MetaGraph), like TF Serving.
  np.save(tmp_path / "jpeg.npy", np.array([images["jpeg"]], dtype=object))
  result = run(SAVED_MODEL_CLI + ["run", "--dir", exported, "--tag_set", "serve",
                "--signature_def", "serving_default",
                "--inputs", f"image_bytes={tmp_path / 'jpeg.npy'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  expected = loaded.signatures["serving_default"](image_bytes=tf.constant([images["jpeg"]]))
  for key in export.OUTPUTS:
    assert f"Result for output key {key}:" in result.stdout
  for name in expected["top5_names"].numpy()[0]:
    assert name.decode() in result.stdout


def test_no_function_requires_xla(exported, tmp_path):
  assert export.xla_must_compile_functions(exported) == []
  # No device of the training machine is baked in: the two-tower placement over /cpu:1 is
  # gone (TF's own save/restore ops pin /device:CPU:0, which every machine has).
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved_model = saved_model_pb2.SavedModel()
  saved_model.ParseFromString((open(os.path.join(exported, "saved_model.pb"), "rb").read()))
  graph = saved_model.meta_graphs[0].graph_def
  devices = {n.device for n in graph.node}
  devices |= {n.device for f in graph.library.function for n in f.node_def}
  assert not [d for d in devices if "CPU:1" in d or "GPU" in d], devices

  # The check can fail: a function compiled with XLA is found.
  module = tf.Module()
  module.f = tf.function(lambda x: x * 2, jit_compile=True,
                         input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / "xla"), signatures=module.f.get_concrete_function())
  assert export.xla_must_compile_functions(str(tmp_path / "xla"))


def test_a_batch_of_mixed_sizes_and_formats(loaded, paper_net, images, stats):
  serve = loaded.signatures["serving_default"]
  names = list(images)
  batch = serve(image_bytes=tf.constant([images[n] for n in names]))
  assert batch["probabilities"].shape == (len(names), NUM_CLASSES)
  for key in ("top5_classes", "top5_probabilities", "top5_wnids", "top5_names"):
    assert batch[key].shape == (len(names), 5), key
  assert batch["top5_classes"].dtype == tf.int32
  np.testing.assert_allclose(batch["probabilities"].numpy().sum(axis=1), 1, atol=1e-5)
  # Each image gets the same answer alone as in the batch.
  for i, name in enumerate(names):
    alone = serve(image_bytes=tf.constant([images[name]]))
    np.testing.assert_allclose(alone["probabilities"][0], batch["probabilities"][i],
                               atol=1e-5, err_msg=name)
  # A grayscale image is its gray replicated into R, G, B.
  gray = np.asarray(Image.open(io.BytesIO(images["gray_png"])))
  as_rgb = serve(image_bytes=tf.constant([encode(np.stack([gray] * 3, axis=-1), "PNG")]))
  np.testing.assert_allclose(as_rgb["probabilities"][0], batch["probabilities"][2], atol=1e-5)
  # An empty batch gets a message that says so.
  with pytest.raises(tf.errors.InvalidArgumentError, match="holds no images"):
    serve(image_bytes=tf.constant([], tf.string))


def test_bad_bytes_are_invalid_argument_and_serving_goes_on(loaded, images):
  serve = loaded.signatures["serving_default"]
  good = serve(image_bytes=tf.constant([images["jpeg"]]))["probabilities"].numpy()
  with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
    serve(image_bytes=tf.constant([images["png"], b"\x00garbage, not an image"]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"empty strings:\] \[1 3\]"):
    serve(image_bytes=tf.constant([images["jpeg"], b"", images["png"], b""]))
  with pytest.raises(tf.errors.InvalidArgumentError):
    serve(image_bytes=tf.constant([images["jpeg"][:200]]))  # a truncated JPEG
  after = serve(image_bytes=tf.constant([images["jpeg"]]))["probabilities"].numpy()
  np.testing.assert_array_equal(after, good)


def test_warmup_records_are_prediction_logs_that_run(exported, loaded):
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  path = os.path.join(exported, "assets.extra", "tf_serving_warmup_requests")
  logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(path)]
  assert [len(tf.make_ndarray(log.predict_log.request.inputs["image_bytes"]))
          for log in logs] == list(export.WARMUP_BATCH_SIZES)
  for log in logs:
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    # Replayed as TF Serving does at load time: the request's inputs into the signature.
    batch = tf.make_ndarray(request.inputs["image_bytes"])
    outputs = loaded.signatures[request.model_spec.signature_name](
        image_bytes=tf.constant(list(batch)))
    assert outputs["top5_names"].shape == (len(batch), 5)
  info = json.load(open(os.path.join(exported, "assets.extra", "keras_alexnet.json")))
  assert info["num_classes"] == NUM_CLASSES and info["metadata"]["classes"] == CLASSES


# --- The 10-view average, versions and crashes, on a small net -------------------------------

def test_ten_views_average_the_softmax_of_the_papers_patches(images, stats, tmp_path):
  model = small_net()
  path = export.export_saved_model(model, {"classes": CLASSES}, stats, str(tmp_path),
                                   ten_views=True, warmup=False)
  serve = tf.saved_model.load(path).signatures["serving_default"]
  image_bytes = [images["jpeg"], images["cmyk_jpeg"]]
  got = serve(image_bytes=tf.constant(image_bytes))["probabilities"].numpy()
  stored = tf.stack([decoding.decode_to_stored(b) for b in image_bytes])
  views = preprocessing.ten_views(stored, stats)
  expected = keras_probabilities(model, tf.reshape(views, [-1, 224, 224, 3]))
  expected = expected.reshape(2, 10, NUM_CLASSES).mean(axis=1)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  centre = keras_probabilities(model, eval_crops(image_bytes, stats))
  assert np.abs(got - centre).max() > 1e-4  # The views matter for this net.


def test_versions_are_numbered_and_never_overwritten_by_accident(images, stats, tmp_path):
  model = small_net()
  base = str(tmp_path / "models")
  meta = {"classes": CLASSES}
  assert export.export_saved_model(model, meta, stats, base) == os.path.join(base, "1")
  assert export.export_saved_model(model, meta, stats, base) == os.path.join(base, "2")
  assert export.export_saved_model(model, meta, stats, base, version=7) == os.path.join(base,
                                                                                        "7")
  assert export.export_saved_model(model, meta, stats, base) == os.path.join(base, "8")
  assert sorted(os.listdir(base)) == ["1", "2", "7", "8"]  # No temporary folder left.
  # Readable like any new folder (not mkdtemp's 0700): the server may run as another user.
  os.makedirs(tmp_path / "plain")
  assert os.stat(os.path.join(base, "1")).st_mode == os.stat(tmp_path / "plain").st_mode

  with pytest.raises(FileExistsError, match="overwrite"):
    export.export_saved_model(model, meta, stats, base, version=2)
  other = small_net(seed=1)
  export.export_saved_model(other, meta, stats, base, version=2, overwrite=True)
  assert sorted(os.listdir(base)) == ["1", "2", "7", "8"]
  crop = eval_crops([images["png"]], stats)
  replaced = tf.saved_model.load(os.path.join(base, "2")).signatures["preprocessed"]
  np.testing.assert_allclose(replaced(images=crop)["probabilities"],
                             keras_probabilities(other, crop), atol=1e-6)
  assert np.abs(keras_probabilities(other, crop) - keras_probabilities(model, crop)).max() > 0


def test_a_version_taken_while_exporting_is_not_overwritten(stats, tmp_path, monkeypatch):
  base = tmp_path / "models"
  os.makedirs(base / "1")
  (base / "1" / "saved_model.pb").write_bytes(b"another export's")
  calls = []
  real_versions = export.versions

  def versions(folder):  # The first listing misses version 1, as if it appeared after it.
    calls.append(folder)
    return [] if len(calls) == 1 else real_versions(folder)
  monkeypatch.setattr(export, "versions", versions)
  path = export.export_saved_model(small_net(), {"classes": CLASSES}, stats, str(base),
                                   warmup=False)
  assert path == str(base / "2") and len(calls) == 2
  assert (base / "1" / "saved_model.pb").read_bytes() == b"another export's"


CRASH = textwrap.dedent("""
    import os, signal, sys
    import keras, numpy as np
    from keras_alexnet import dataset_info, export
    model = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    def die(*args, **kwargs):  # The power goes out while the warm-up file is written.
      os.kill(os.getpid(), signal.SIGKILL)
    export.write_warmup_requests = die
    export.export_saved_model(model, {"classes": None}, dataset_info.imagenet_statistics(),
                              sys.argv[1])
""")


def test_a_crash_mid_export_leaves_no_version(stats, tmp_path, monkeypatch):
  base = tmp_path / "models"
  script = tmp_path / "crash.py"
  script.write_text(CRASH)
  result = run([sys.executable, str(script), str(base)])
  assert result.returncode == -9, result.stderr[-3000:]
  left = os.listdir(base)
  assert left and not [name for name in left if name.isdigit()], left  # Only the temp folder.
  assert export.versions(str(base)) == []

  # An exception instead of a kill: nothing is left behind at all.
  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(export, "write_warmup_requests", fail)
  with pytest.raises(OSError, match="disk full"):
    export.export_saved_model(small_net(), {"classes": CLASSES}, stats, str(base))
  # The killed export's folder was cleaned by this one (its pid is gone), and this one's too.
  assert os.listdir(base) == []
  monkeypatch.undo()
  # And the next export is version 1.
  assert export.export_saved_model(small_net(), {"classes": CLASSES}, stats, str(base),
                                   warmup=False) == str(base / "1")


def test_bad_input_is_refused_before_writing(stats, tmp_path):
  base = tmp_path / "models"
  model = small_net()
  with pytest.raises(ValueError, match="label map has 3 classes but the model outputs 10"):
    export.export_saved_model(model, {"classes": CLASSES[:3]}, stats, str(base))
  with pytest.raises(ValueError, match=r"classes\[1\] must be \[wnid_or_name, text\]"):
    export.export_saved_model(model, {"classes": [["a", "b"], "c"] + CLASSES[2:]}, stats,
                              str(base))
  with pytest.raises(ValueError, match="positive integer"):
    export.export_saved_model(model, {"classes": CLASSES}, stats, str(base), version=0)
  with pytest.raises(ValueError, match="local or mounted folder; received the URL"):
    export.export_saved_model(model, {"classes": CLASSES}, stats, "gs://bucket/alexnet")
  with pytest.raises(ValueError, match="mean must be one of"):
    export.export_saved_model(model, {"classes": CLASSES}, stats, str(base), mean="median")
  # Crops are square and cut from the 256x256 stored image (224, or a Caffe net's 227).
  for shape in ((288, 288, 3), (224, 200, 3)):
    wrong_input = keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                                    keras.layers.Dense(10)])
    with pytest.raises(ValueError, match=re.escape(f"input shape is {(None, *shape)}")):
      export.export_saved_model(wrong_input, {"classes": CLASSES}, stats, str(base))
  assert not base.exists()


def test_without_a_label_map_the_indices_stand_in(images, stats, tmp_path):
  path = export.export_saved_model(small_net(num_classes=3), {"classes": None}, stats,
                                   str(tmp_path), warmup=False)
  out = tf.saved_model.load(path).signatures["serving_default"](
      image_bytes=tf.constant([images["jpeg"]]))
  assert out["top5_classes"].shape == (1, 3)  # Fewer than 5 classes: all of them, ranked.
  assert [int(n) for n in out["top5_names"].numpy()[0]] == list(out["top5_classes"].numpy()[0])


def test_a_model_that_ends_in_softmax_is_not_softmaxed_twice(images, stats, tmp_path):
  logits_net = small_net()
  softmax_net = keras.Sequential([logits_net, keras.layers.Softmax(name="probabilities")])
  path = export.export_saved_model(softmax_net, {"classes": CLASSES}, stats, str(tmp_path),
                                   warmup=False)
  crops = eval_crops([images["jpeg"], images["png"]], stats)
  got = tf.saved_model.load(path).signatures["preprocessed"](images=crops)["probabilities"]
  np.testing.assert_allclose(got, keras_probabilities(logits_net, crops), atol=1e-6)


# --- Through a real training run's workdir ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A real run: a tiny dataset, two SGD steps of the test net, a validation pass."""
  import tiny_data  # pylint: disable=g-import-not-at-top  (tests/tiny_data.py)
  from keras_alexnet import config as config_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import model as model_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import training  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("run")
  data_dir = tiny_data.write_dataset(str(root / "data"), num_classes=6, train=16, validation=12)
  config = config_lib.Config(
      model=model_lib.ModelConfig(num_classes=None),
      data=data_sources.DataConfig(data_dir=data_dir, shuffle_buffer=16, deterministic=True),
      augment=preprocessing.AugmentConfig(),
      train=config_lib.TrainConfig(tiny_model=True, batch_size=8, epochs=1, steps_per_epoch=2,
                                   lr_scaling="none", log_every_steps=1, summary_images=False))
  workdir = str(root / "workdir")
  training.train_and_evaluate(config, workdir)
  return workdir, data_dir


def validation_examples(data_dir):
  from keras_alexnet import features  # pylint: disable=g-import-not-at-top
  files = sorted(tf.io.gfile.glob(os.path.join(data_dir, "validation-*")))
  examples = [tf.io.parse_single_example(r, features.FEATURE_SPEC)
              for r in tf.data.TFRecordDataset(files)]
  return ([e[features.ENCODED].numpy() for e in examples],
          np.array([int(e[features.LABEL]) for e in examples]))


def test_export_command_on_a_trained_workdir_agrees_with_evaluate(trained, tmp_path):
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import config as config_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import evaluate  # pylint: disable=g-import-not-at-top
  workdir, data_dir = trained
  base = tmp_path / "serving"
  result = run([sys.executable, "-m", "keras_alexnet.export", f"--workdir={workdir}",
                f"--export_dir={base}"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == str(base / "1")
  ten = export.export_from_workdir(export.ExportConfig(workdir=workdir, export_dir=str(base),
                                                       ten_views=True, warmup=False))
  assert ten == str(base / "2")

  # Per image: the export equals the checkpoint under evaluate's centre-crop preprocessing
  # (the workdir's statistics and mean).
  image_bytes, labels = validation_examples(data_dir)
  model, metadata = workdir_lib.load_model(workdir)
  stats = workdir_lib.load_statistics(workdir)
  expected = keras_probabilities(model, preprocessing.center_crop(
      tf.stack([decoding.decode_to_stored(b) for b in image_bytes]), stats,
      metadata["augment"]["mean"]))
  centre = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
      image_bytes=tf.constant(image_bytes))
  np.testing.assert_allclose(centre["probabilities"], expected, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(centre["top5_classes"], np.argsort(-expected, axis=1)[:, :5])
  assert [n.decode() for n in centre["top5_names"].numpy()[:, 0]] == [
      metadata["classes"][c][1] for c in np.argmax(expected, axis=1)]

  # Over the validation split: the same top-1 and top-5 errors as `evaluate`, both views.
  results = evaluate.evaluate(config_lib.EvalConfig(
      workdirs=(workdir,), output=str(tmp_path / "evaluation.json")))["models"][0]
  ten_views = tf.saved_model.load(ten).signatures["serving_default"](
      image_bytes=tf.constant(image_bytes))
  for view, outputs in (("center", centre), ("ten", ten_views)):
    top5 = outputs["top5_classes"].numpy()
    assert results[view]["top1_error"] == pytest.approx(np.mean(top5[:, 0] != labels)), view
    assert results[view]["top5_error"] == pytest.approx(
        1 - np.mean((top5 == labels[:, None]).any(axis=1))), view


def test_export_command_refuses_bad_input(trained, tmp_path):
  workdir, _ = trained
  base = tmp_path / "serving"
  os.makedirs(base / "3")
  with pytest.raises(FileExistsError, match="3 already exists; pass overwrite=True"):
    export.export_from_workdir(export.ExportConfig(workdir=workdir, export_dir=str(base),
                                                   version=3))
  assert os.listdir(base / "3") == []  # Untouched.
  with pytest.raises(FileNotFoundError, match="neither a training workdir"):
    export.export_from_workdir(export.ExportConfig(workdir=str(tmp_path),
                                                   export_dir=str(base)))
  empty = tmp_path / "no_checkpoints"
  os.makedirs(empty)
  with open(os.path.join(workdir, "config.json")) as f:
    (empty / "config.json").write_text(f.read())
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export.export_from_workdir(export.ExportConfig(workdir=str(empty), export_dir=str(base)))
  assert os.listdir(base) == ["3"]
