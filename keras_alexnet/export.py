"""Exports a trained AlexNet as a SavedModel that stock TF Serving builds load and run.

    python -m keras_alexnet.export --workdir=DIR --export_dir=BASE [--version=N] [--ten_views]

writes BASE/<version>/, the layout TF Serving watches (a base folder of numbered versions):

- signature `serving_default`: `image_bytes` tf.string [N] of encoded JPEG/PNG images (RGB,
  grayscale or CMYK). TF Serving's REST API turns {"b64": "..."} into bytes for inputs whose
  name ends in `_bytes`. Inside the graph runs `preprocessing.serving_preprocess`, the very
  function `evaluate` uses for the centre crop (decode to RGB, shorter side to 256, centre 224
  crop, minus the training mean), so serving and evaluation cannot drift. With ten_views=True
  it runs the paper's test-time averaging instead (section 4.1: four corner and the centre
  224 patches and their mirrors, softmax outputs averaged) on `decoding.decode_to_stored`.
- signature `preprocessed`: `images` float32 [N, 224, 224, 3], already mean-subtracted crops.
- both output `probabilities` float32 [N, C], `top5_classes` int32 [N, 5],
  `top5_probabilities` float32 [N, 5], `top5_wnids` and `top5_names` string [N, 5] (the
  dataset's label map). With fewer than 5 classes, "top 5" holds all C of them.
- assets.extra/tf_serving_warmup_requests: PredictionLog records TF Serving replays before it
  marks the version available, so the first real request does not pay for lazy initialization.
- assets.extra/keras_alexnet.json: where the model came from (model config, classes, data dir).

A version is written into a hidden temporary folder in BASE (TF Serving ignores names that are
not integers) and renamed into place when complete, so a server never sees half a model and a
crash leaves no numbered folder. No function may carry the _XlaMustCompile attribute: the stock
TF Serving images do not run such functions (tensorflow/serving#2214: "Could not find compiler
for platform CUDA" on the GPU image; XLA on CPU only behind an experimental flag, #1858), so the
export checks its own graph.
"""

import dataclasses
import json
import os
import re
import shutil
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import errors
from keras_alexnet import files
from keras_alexnet import preprocessing
from keras_alexnet import workdir_lock

SERVING_SIGNATURE = "serving_default"
PREPROCESSED_SIGNATURE = "preprocessed"
# TF Serving's REST API base64-decodes {"b64": ...} values of inputs named *_bytes.
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUTS = ("probabilities", "top5_classes", "top5_probabilities", "top5_wnids", "top5_names")
TOP_K = 5
NUM_VIEWS = 10  # Section 4.1: "five 224x224 patches ... as well as their horizontal reflections".

ASSETS_EXTRA = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"  # The name TF Serving looks for in assets.extra.
INFO_FILENAME = "keras_alexnet.json"
# Warm-up batch sizes: TF Serving replays each record once at load time, so each batch size a
# client sends gets its kernels initialized and memory allocated before the first request.
WARMUP_BATCH_SIZES = (1, 8)
XLA_MUST_COMPILE = "_XlaMustCompile"
_TMP_PREFIX = ".tmp-export-"
# In every temporary export folder, holding {"host", "pid"} of the exporting process: a
# folder of a process that is gone is the leftover of a killed export, and only such folders
# are cleaned (never a .tmp-export-* folder someone else made).
_TMP_MARKER = ".keras_alexnet_export_in_progress"
_TMP_NAME = re.compile(re.escape(_TMP_PREFIX) + r"(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]{8}")
# In every version: the files the export wrote, so --overwrite removes exactly those.
FILES_FILENAME = "keras_alexnet_files.json"


def export_saved_model(model: keras.Model, metadata: Dict[str, Any],
                       stats: "dataset_info.Statistics", export_base: str,
                       version: Optional[int] = None, ten_views: bool = False,
                       overwrite: bool = False, mean: str = "per_pixel",
                       warmup: bool = True, model_name: str = "alexnet",
                       max_image_pixels: int = decoding.MAX_IMAGE_PIXELS) -> str:
  """Writes `model` as export_base/<version>/ for TF Serving and returns that path.

  Args:
    model: float32 [N, 224, 224, 3] mean-subtracted crops -> logits or softmax [N, C].
    metadata: the run's metadata (workdir_lib.load_model); "classes" (a list of
      [wnid, text], or None: the class indices then stand in for wnids and names) is used.
    stats: the training-set statistics the model was trained with (the mean to subtract).
    export_base: the folder of versions TF Serving is pointed at; created if missing.
    version: a positive integer; None takes the next free one (1 in an empty folder).
    ten_views: serve the paper's 10-view average instead of the centre crop.
    overwrite: replace an existing `version` (otherwise that is an error).
    mean: the mean subtraction training used, "per_pixel" or "per_channel".
    warmup: write assets.extra/tf_serving_warmup_requests (needs tensorflow-serving-api;
      without it the export logs a warning and writes none).
    model_name: the model name in the warm-up requests (TF Serving's --model_name).
    max_image_pixels: serve_bytes refuses (InvalidArgument) images whose header declares
      more pixels, before decoding them: the memory a request takes is bounded.
  """
  # Everything that can be refused is refused before anything is written.
  num_classes = _check_model(model)
  wnids, names = _label_map(metadata.get("classes"), num_classes)
  _check_version_free(export_base, version, overwrite)
  if mean not in preprocessing.MEANS:
    raise errors.invalid("mean", mean, f"one of {preprocessing.MEANS}")
  if max_image_pixels < 1:
    raise errors.invalid("max_image_pixels", max_image_pixels, ">= 1")

  module, signatures = serving_module(
      ServingFunctions(model, stats, wnids, names, ten_views=ten_views, mean=mean,
                       max_pixels=max_image_pixels))
  os.makedirs(export_base, exist_ok=True)
  clean_killed_exports(export_base)
  # The name carries host and pid too: an export killed before its marker is written leaves an
  # empty folder that clean_killed_exports still knows as its own.
  # mkdtemp's 0700 is widened to the umask's mode: the server often runs as another user (a
  # container's).
  tmp = files.make_temp_dir(export_base, f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-")
  try:
    with open(os.path.join(tmp, _TMP_MARKER), "w") as f:
      json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
    tf.saved_model.save(module, tmp, signatures=signatures)
    xla = xla_must_compile_functions(tmp)
    if xla:
      raise RuntimeError(
          f"The exported graph has functions that must be compiled with XLA ({xla}); stock "
          "TF Serving builds could not run them. Was the model built with jit_compile or "
          "Conv2D(groups=...)?")
    os.makedirs(os.path.join(tmp, ASSETS_EXTRA))
    if warmup:
      write_warmup_requests(os.path.join(tmp, ASSETS_EXTRA, WARMUP_FILENAME), model_name)
    _write_info(os.path.join(tmp, ASSETS_EXTRA, INFO_FILENAME), metadata, num_classes,
                ten_views, mean, stats)
    os.remove(os.path.join(tmp, _TMP_MARKER))
    _write_file_list(tmp)
    path = _move_into_place(tmp, export_base, version, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("Exported %s (%s) to %s", model.name,
               "10-view average" if ten_views else "centre crop", path)
  return path


class ServingFunctions:
  """The serving computations around the model: bytes or crops in, probabilities and top 5
  out. A plain object on purpose, see `serving_module`."""

  def __init__(self, model: keras.Model, stats, wnids: Sequence[str], names: Sequence[str],
               ten_views: bool = False, mean: str = "per_pixel",
               max_pixels: int = decoding.MAX_IMAGE_PIXELS):
    # Device placements (the paper's two-tower split) are recorded in the graph; the serving
    # machine may not have those devices, so the served net is an unplaced copy.
    self.model = _unplaced(model)
    self.stats = stats
    self.ten_views = ten_views
    self.mean = mean
    self.max_pixels = max_pixels
    self.wnids = tf.constant(list(wnids), tf.string)
    self.names = tf.constant(list(names), tf.string)
    self.outputs_softmax = isinstance(model.layers[-1], keras.layers.Softmax)
    # The crop side: 224, or the model's own (a converted Caffe net takes 227).
    self.size = int(model.input_shape[1])

  def serve_bytes(self, image_bytes):
    image_bytes = _check_not_empty(image_bytes)
    size = self.size
    if not self.ten_views:
      crops = tf.map_fn(
          lambda b: preprocessing.serving_preprocess(b, self.stats, self.mean, size,
                                                     self.max_pixels),
          image_bytes,
          fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
      return self.serve_images(crops)
    stored = tf.map_fn(lambda b: decoding.decode_to_stored(b, self.max_pixels),
                       image_bytes,
                       fn_output_signature=tf.TensorSpec(
                           [decoding.STORED_SIZE, decoding.STORED_SIZE, 3], tf.uint8))
    views = preprocessing.ten_views(stored, self.stats, self.mean, size)  # [N, 10, 224, 224, 3]
    probabilities = self._probabilities(tf.reshape(views, [-1, size, size, 3]))
    num_classes = probabilities.shape[-1]
    # Section 4.1: "averaging the predictions made by the network's softmax layer".
    probabilities = tf.reduce_mean(
        tf.reshape(probabilities, [-1, NUM_VIEWS, num_classes]), axis=1)
    return self._top_k(probabilities)

  def serve_images(self, images):
    return self._top_k(self._probabilities(images))

  def _probabilities(self, images):
    # TF's CPU convolution fails on an empty batch with a message about "groups"; say it.
    check = tf.debugging.Assert(tf.shape(images)[0] > 0, [
        "The request holds no images; send a batch of at least one."])
    with tf.control_dependencies([check]):
      outputs = self.model(images, training=False)
    # Float32 even under a mixed-precision policy: clients get the dtype the signature says.
    outputs = tf.cast(outputs, tf.float32)
    return outputs if self.outputs_softmax else tf.nn.softmax(outputs)

  def _top_k(self, probabilities):
    k = min(TOP_K, probabilities.shape[-1])
    top = tf.math.top_k(probabilities, k=k)
    classes = tf.cast(top.indices, tf.int32)
    return {"probabilities": probabilities,
            "top5_classes": classes,
            "top5_probabilities": top.values,
            "top5_wnids": tf.gather(self.wnids, classes),
            "top5_names": tf.gather(self.names, classes)}


def serving_module(functions: ServingFunctions) -> Tuple[tf.Module, Dict[str, Any]]:
  """The tf.Module to save and its signatures {name: concrete function}.

  The module holds the tf.functions and the variables they read, not the Keras model: with a
  Keras 3 model as an attribute, tf.saved_model.load works but the TF1 loader that TF Serving
  and saved_model_cli use does not restore the variables ("Could not find variable ...").
  """
  module = tf.Module(name="alexnet_serving")
  module.serve_bytes = tf.function(
      functions.serve_bytes,
      input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
  module.serve_images = tf.function(
      functions.serve_images,
      input_signature=[tf.TensorSpec([None, functions.size, functions.size, 3], tf.float32,
                                     name=IMAGES_INPUT)])
  signatures = {SERVING_SIGNATURE: module.serve_bytes.get_concrete_function(),
                PREPROCESSED_SIGNATURE: module.serve_images.get_concrete_function()}
  variables = {}
  for function in signatures.values():
    variables.update((id(v), v) for v in function.variables)
  module.model_variables = list(variables.values())
  return module, signatures


def _check_not_empty(image_bytes):
  """Fails with InvalidArgument naming the empty elements (the decoders would only say
  "unknown image format", without the index)."""
  empty = tf.where(tf.equal(tf.strings.length(image_bytes), 0))[:, 0]
  check = tf.debugging.Assert(
      tf.equal(tf.size(empty), 0),
      [f"{BYTES_INPUT} must hold encoded images (JPEG, PNG, GIF or BMP); these elements are "
       "empty strings:", empty], summarize=16)
  with tf.control_dependencies([check]):
    return tf.identity(image_bytes)


def _check_model(model: keras.Model) -> int:
  """The model's class count; a ValueError unless it maps [N, 224, 224, 3] to [N, C]."""
  input_shape = tuple(model.input_shape)
  side = input_shape[1] if len(input_shape) == 4 else None
  if (not isinstance(side, int) or input_shape[1:] != (side, side, 3)
      or side > decoding.STORED_SIZE):
    size = decoding.IMAGE_SIZE
    raise ValueError(f"The model must take [N, {size}, {size}, 3] crops (or "
                     f"another square side <= {decoding.STORED_SIZE}, as a converted Caffe "
                     f"net's 227); its input shape is {input_shape}.")
  output_shape = tuple(model.output_shape)
  if len(output_shape) != 2 or not output_shape[-1] or output_shape[-1] < 2:
    raise ValueError(f"The model must output [N, num_classes >= 2]; its output shape is "
                     f"{output_shape}.")
  return int(output_shape[-1])


def _label_map(classes, num_classes: int):
  """(wnids, names) for the class indices 0..C-1 from metadata's [[wnid, text], ...]."""
  if classes is None:
    logging.warning("No label map in the metadata: the class indices stand in for the "
                    "wnids and names in the export's outputs.")
    indices = [str(i) for i in range(num_classes)]
    return indices, indices
  if len(classes) != num_classes:
    raise ValueError(f"The label map has {len(classes)} classes but the model outputs "
                     f"{num_classes}; was the model trained on another dataset?")
  for i, entry in enumerate(classes):
    if (not isinstance(entry, (list, tuple)) or len(entry) != 2
        or not all(isinstance(s, str) for s in entry)):
      raise ValueError(f"classes[{i}] must be [wnid_or_name, text] strings; received "
                       f"{entry!r}.")
  return [wnid for wnid, _ in classes], [text or wnid for wnid, text in classes]


def _unplaced(model: keras.Model) -> keras.Model:
  """`model` itself, or if any layer is pinned to devices, a copy without placements that
  shares nothing but the weights' values (same layers, names and maths)."""
  def placed(layer):
    config = layer.get_config()
    return bool(config.get("devices") or config.get("device"))

  if not any(placed(layer) for layer in model.layers):
    return model

  def clone_layer(layer):
    config = layer.get_config()
    for key in ("devices", "device"):
      if key in config:
        config[key] = None
    return layer.__class__.from_config(config)

  clone = keras.models.clone_model(model, clone_function=clone_layer)
  clone.set_weights(model.get_weights())
  return clone


def xla_must_compile_functions(saved_model_dir: str) -> List[str]:
  """Names of the functions (and nodes) in a SavedModel marked _XlaMustCompile=true.

  Such a function runs only where the server can compile XLA, which stock TF Serving images
  do not by default (see the module docstring).
  """
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())

  def must(attrs):
    return XLA_MUST_COMPILE in attrs and attrs[XLA_MUST_COMPILE].b

  found = []
  for meta_graph in saved_model.meta_graphs:
    found += [f"node {n.name}" for n in meta_graph.graph_def.node if must(n.attr)]
    for function in meta_graph.graph_def.library.function:
      if must(function.attr):
        found.append(f"function {function.signature.name}")
      found += [f"node {n.name} in {function.signature.name}" for n in function.node_def
                if must(n.attr)]
  return found


def sample_images() -> List[bytes]:
  """A few encoded images of the kinds clients send: RGB JPEGs of several sizes and aspect
  ratios, a grayscale PNG, an RGB PNG (smooth gradients, so they compress like photos)."""
  def gradient(height, width, channels):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [x / width, y / height, (x + y) / (width + height)][:channels]
    return tf.constant(np.stack(planes, axis=-1) * 255, tf.float32)

  def jpeg(h, w):
    return tf.io.encode_jpeg(tf.cast(gradient(h, w, 3), tf.uint8), quality=90).numpy()

  def png(h, w, c):
    return tf.io.encode_png(tf.cast(gradient(h, w, c), tf.uint8)).numpy()

  return [jpeg(375, 500), jpeg(500, 333), png(256, 256, 1), png(300, 400, 3)]


def write_warmup_requests(path: str, model_name: str = "alexnet") -> int:
  """Writes TF Serving warm-up records (PredictionLog protos in a TFRecord file) for the
  serving_default signature from sample_images(); returns how many (0 without the protos)."""
  try:
    from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("tensorflow-serving-api is not installed (pip install "
                    "'keras_alexnet[serving]'): no warm-up requests written; TF Serving will "
                    "initialize lazily on the first requests.")
    return 0
  images = sample_images()
  count = 0
  with tf.io.TFRecordWriter(path) as writer:
    for batch_size in WARMUP_BATCH_SIZES:
      batch = [images[i % len(images)] for i in range(batch_size)]
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE),
          inputs={BYTES_INPUT: tf.make_tensor_proto(batch, dtype=tf.string,
                                                    shape=[batch_size])})
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
      count += 1
  return count


def _write_info(path: str, metadata: Dict[str, Any], num_classes: int, ten_views: bool,
                mean: str, stats):
  info = {"num_classes": num_classes, "ten_views": ten_views, "mean": mean,
          "statistics_source": getattr(stats, "source", None),
          "signatures": [SERVING_SIGNATURE, PREPROCESSED_SIGNATURE], "metadata": metadata}
  with open(path, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True, default=_jsonable)
    f.write("\n")


def _jsonable(value):
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return str(value)


def _check_version_free(export_base: str, version: Optional[int], overwrite: bool):
  if "://" in str(export_base):
    # os.makedirs would make a local folder named "gs:"; the atomic rename needs POSIX anyway.
    raise ValueError(f"export_base must be a local or mounted folder; received the URL "
                     f"{export_base!r}. Export locally, then copy the version folder.")
  if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                              or version < 1):
    raise ValueError(f"version must be a positive integer (TF Serving's version folders); "
                     f"received {version!r}.")
  path = os.path.join(export_base, str(version))
  if version is not None and not overwrite and os.path.exists(path):
    raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to "
                          "replace it, or leave the version out to take the next free one.")
  if version is not None and overwrite and os.path.exists(path) and _listed_files(path) is None:
    raise FileExistsError(
        f"{path} has no {ASSETS_EXTRA}/{FILES_FILENAME}, so it is not a version this project "
        "exported (or one from before exports listed their files): --overwrite replaces only "
        "those, and nothing was changed. Move it away yourself, or export another version.")


def versions(export_base: str) -> List[int]:
  """The version numbers in export_base (folders named by an integer), ascending."""
  if not os.path.isdir(export_base):
    return []
  return sorted(int(name) for name in os.listdir(export_base)
                if name.isdigit() and os.path.isdir(os.path.join(export_base, name)))


def _rename_unless_taken(tmp: str, path: str) -> bool:
  """Renames tmp to path; False if path exists (taken by another export meanwhile)."""
  try:
    os.rename(tmp, path)
    return True
  except OSError:
    if not os.path.exists(path):
      raise
    return False


def _move_into_place(tmp: str, export_base: str, version: Optional[int],
                     overwrite: bool) -> str:
  """Renames the finished export to export_base/<version> in one step (same filesystem)."""
  if version is None:
    # Another export may take a number between our listing and our rename; rename onto an
    # existing non-empty folder fails, so try the next number.
    for _ in range(100):
      path = os.path.join(export_base, str((versions(export_base) or [0])[-1] + 1))
      if _rename_unless_taken(tmp, path):
        return path
    raise RuntimeError(f"Could not claim a free version folder in {export_base}.")
  path = os.path.join(export_base, str(version))
  if not os.path.exists(path) and _rename_unless_taken(tmp, path):
    return path
  if not overwrite:
    raise FileExistsError(f"{path} appeared while exporting; pass overwrite=True to "
                          "replace it.")
  listed = _listed_files(path)
  if listed is None:
    raise FileExistsError(
        f"{path} has no {ASSETS_EXTRA}/{FILES_FILENAME}, so it is not a version this project "
        "exported (or one from before exports listed their files): --overwrite replaces only "
        "those, and nothing was changed. Move it away yourself, or export another version.")
  # Swap: the old version moves aside (a non-integer name TF Serving ignores), the new one
  # takes its name; if the swap fails the old one comes back. Then the files the old export
  # listed are removed; anything else in it is kept, under the aside name, and reported.
  aside = os.path.join(export_base, f".replaced-{version}-{os.getpid()}")
  os.rename(path, aside)
  try:
    os.rename(tmp, path)
  except BaseException:
    os.rename(aside, path)
    raise
  _remove_listed(aside, listed)
  return path


def _write_file_list(folder: str) -> None:
  """FILES_FILENAME: every file under `folder` (relative paths), written last."""
  files = sorted(os.path.relpath(os.path.join(root, n), folder)
                 for root, _, names in os.walk(folder) for n in names)
  files.append(os.path.join(ASSETS_EXTRA, FILES_FILENAME))
  with open(os.path.join(folder, ASSETS_EXTRA, FILES_FILENAME), "w") as f:
    json.dump({"files": files}, f, indent=1)


def _listed_files(version_dir: str) -> Optional[List[str]]:
  try:
    with open(os.path.join(version_dir, ASSETS_EXTRA, FILES_FILENAME)) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  # Relative paths inside the folder only, whatever the file says.
  return [f for f in files if isinstance(f, str) and not os.path.isabs(f)
          and ".." not in f.split(os.sep)]


def _remove_listed(folder: str, files: List[str]) -> None:
  """Removes the listed regular files of `folder`, then its folders left empty."""
  removed = 0
  for name in files:
    path = os.path.join(folder, name)
    if os.path.isfile(path) and not os.path.islink(path):
      os.remove(path)
      removed += 1
  for root, _, _ in sorted(os.walk(folder), key=lambda w: -len(w[0])):
    try:
      os.rmdir(root)
    except OSError:
      pass   # holds something the export did not write
  logging.info("--overwrite: removed the %d files of the replaced version.", removed)
  if os.path.exists(folder):
    logging.warning("%s holds files the replaced export did not write; kept there.", folder)


def clean_killed_exports(export_base: str) -> List[str]:
  """Removes the temporary folders of exports killed on this host; returns their paths."""
  removed = []
  for name in sorted(os.listdir(export_base)):
    path = os.path.join(export_base, name)
    if not name.startswith(_TMP_PREFIX) or os.path.islink(path) or not os.path.isdir(path):
      continue
    try:
      with open(os.path.join(path, _TMP_MARKER)) as f:
        holder = json.load(f)
      host, pid = holder["host"], int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
      # No marker: ours only if killed between making the folder and writing the marker, so
      # empty, and named for this host and a pid (mkdtemp adds 8 characters).
      named = _TMP_NAME.fullmatch(name)
      if not named or os.listdir(path):
        continue   # not one of ours (or still being created): left alone
      host, pid = named["host"], int(named["pid"])
    if host != socket.gethostname() or workdir_lock.pid_alive(pid):
      continue
    logging.warning("Removing %s, left by an export (pid %d) that was killed.", path, pid)
    shutil.rmtree(path, ignore_errors=True)
    removed.append(path)
  return removed


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What the export command needs (built from its flags)."""
  workdir: str
  export_dir: str
  which: str = "best"
  version: Optional[int] = None
  overwrite: bool = False
  ten_views: bool = False
  warmup: bool = True
  model_name: str = "alexnet"
  max_image_pixels: int = decoding.MAX_IMAGE_PIXELS


def export_from_workdir(config: ExportConfig) -> str:
  """Exports the workdir's checkpoint with the statistics and mean its training used (the
  same ones `evaluate` takes from the workdir)."""
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  _check_version_free(config.export_dir, config.version, config.overwrite)
  model, metadata = workdir_lib.load_model(config.workdir, which=config.which)
  stats = workdir_lib.load_statistics(metadata["workdir"])
  mean = metadata.get("augment", {}).get("mean", "per_pixel")
  return export_saved_model(model, metadata, stats, config.export_dir,
                            version=config.version, ten_views=config.ten_views,
                            overwrite=config.overwrite, mean=mean, warmup=config.warmup,
                            model_name=config.model_name,
                            max_image_pixels=config.max_image_pixels)


def main(argv):
  if len(argv) > 1:
    print(f"export: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = ExportConfig(
      workdir=f.workdir, export_dir=f.export_dir, which=f.which, version=f.version,
      overwrite=f.overwrite, ten_views=f.ten_views, warmup=f.warmup, model_name=f.model_name,
      max_image_pixels=f.max_image_pixels)
  try:
    path = export_from_workdir(config)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"export: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The training run's workdir (checkpoints, config.json).")
  flags.DEFINE_string("export_dir", None, "Base folder of numbered versions (TF Serving's "
                      "--model_base_path).")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of the workdir.")
  flags.DEFINE_integer("version", None, "Version folder to write; default: the next free "
                       "integer.", lower_bound=1)
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --version.")
  flags.DEFINE_boolean("ten_views", False, "Serve the paper's 10-view average (section 4.1) "
                       "instead of the centre crop; about 10x the compute per image.")
  flags.DEFINE_boolean("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")
  flags.DEFINE_string("model_name", "alexnet", "Model name in the warm-up requests.")
  flags.DEFINE_integer("max_image_pixels", decoding.MAX_IMAGE_PIXELS, "The served model "
                       "refuses images whose header declares more pixels (width x height), "
                       "before decoding: bounds the memory of a request.", lower_bound=1)
  flags.mark_flags_as_required(["workdir", "export_dir"])


def run():
  """The command (`python -m keras_alexnet.export`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, _define_flags)


if __name__ == "__main__":
  run()
