"""keras_alexnet.cli: flagfiles by path or shipped recipe from any directory, --help with the
command's own flags, quiet TensorFlow start-up; and `import keras_alexnet` registering what a
.keras file needs."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_alexnet import cli
import tiny_data

REPO = tiny_data.REPO


def _lines(path):
  with open(path) as f:
    return [l.strip() for l in f if l.strip().startswith("-")]


def test_a_recipe_and_its_nested_include_expand_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # no flags/ here
  expanded = cli.expand_flagfiles(["--flagfile=flags/ablations/no_lrn.cfg", "--epochs=3"])
  paper = _lines(os.path.join(REPO, "flags", "paper.cfg"))
  # The nested flagfile in place, then the ablation's own flag, then the command line's.
  assert expanded == paper + ["--nolrn", "--epochs=3"]
  # The short names name the same recipes.
  assert cli.expand_flagfiles(["--flagfile=paper"]) == paper
  assert cli.expand_flagfiles(["--flagfile", "ablations/no_lrn.cfg"]) == paper + ["--nolrn"]


def test_a_users_own_flagfile_wins_and_may_include_a_recipe(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs("flags")
  (tmp_path / "flags" / "paper.cfg").write_text("# mine\n--epochs=7\n")
  (tmp_path / "mine.cfg").write_text("--flagfile=flags/smoke.cfg\n// a comment\n\n--seed=3\n")
  # flags/paper.cfg exists here, so it is the user's file, not the shipped recipe.
  assert cli.expand_flagfiles(["--flagfile=flags/paper.cfg"]) == ["--epochs=7"]
  # smoke.cfg is not here: the shipped one.
  assert cli.expand_flagfiles(["--flagfile=mine.cfg"]) == _lines(
      os.path.join(REPO, "flags", "smoke.cfg")) + ["--seed=3"]
  # After "--" nothing is a flagfile.
  assert cli.expand_flagfiles(["--", "--flagfile=x"]) == ["--", "--flagfile=x"]


def test_flagfile_errors_name_the_file_and_what_is_allowed(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"'papr' is neither a file .* the recipes are .*paper"):
    cli.expand_flagfiles(["--flagfile=papr"])
  (tmp_path / "bad.cfg").write_text("--epochs=1\nepochs=2\n")
  with pytest.raises(ValueError, match=r"bad.cfg:2: 'epochs=2' is not a flag"):
    cli.expand_flagfiles(["--flagfile=bad.cfg"])
  (tmp_path / "loop.cfg").write_text("--flagfile=loop.cfg\n")
  with pytest.raises(ValueError, match="nested more than .* include itself"):
    cli.expand_flagfiles(["--flagfile=loop.cfg"])
  assert "paper.cfg" in cli.recipes() and "ablations/tanh.cfg" in cli.recipes()


def _command(module, *args, cwd):
  env = tiny_data.child_env()
  env.pop("TF_CPP_MIN_LOG_LEVEL")   # what a user gets by default
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


# `python -m keras_alexnet.train --help` as it was when each flag was written three times
# (issue 16 made the flags and these headings from one table in config.py), plus the one flag
# added since: --cpu_kernels.
TRAIN_HELP_BEFORE_ISSUE_16 = {
    "Data": ["batch_size", "cache", "data_dir", "data_format", "data_service_address",
             "data_timeout", "eval_steps", "label_offset", "private_threadpool_size",
             "shuffle_buffer", "synthetic"],
    "Model (section 3)": ["activation", "conv6", "dropout", "init", "input_scale", "lrn",
                          "num_classes", "pooling", "remove", "variant"],
    "Augmentation (section 4.1)": ["mean", "mirror", "pca_lighting", "random_crop"],
    "Optimization (section 5)": ["decay_biases", "epochs", "learning_rate", "lr_scaling",
                                 "lr_schedule", "max_lr_drops", "momentum", "plateau_min_delta",
                                 "plateau_patience", "step_epochs", "steps_per_epoch",
                                 "weight_decay"],
    "Fine-tuning": ["init_checkpoint", "trainable_from"],
    "Hardware and bookkeeping": ["checkpoint_every_steps", "collective_timeout", "cpu_kernels",
                                 "deterministic",
                                 "devices", "keep_checkpoints", "log_every_steps",
                                 "num_cpu_devices", "precision", "resume", "seed", "strategy",
                                 "summary_images", "workdir", "xla"],
    "Other flags": ["tiny_model"],
}


def _help_sections(text):
  """{heading: [flag names, in --help's order]} of a command's --help."""
  sections, heading = {}, None
  for line in text.splitlines():
    if re.match(r"^\S.*:$", line):
      heading = line[:-1]
      sections[heading] = []
    elif heading and re.match(r"^  --(\[no\])?\w+:", line):
      sections[heading].append(re.match(r"^  --(?:\[no\])?(\w+):", line).group(1))
  return sections


def test_help_lists_each_commands_own_flags_and_tf_stays_quiet(tmp_path):
  build = _command("tfrecords.build", "--help", cwd=REPO)
  assert build.returncode == 0, build.stderr
  for flag in ("--input", "--output_dir", "--train_shards", "--validation_shards", "--verify"):
    assert flag in build.stdout
  train = _command("keras_alexnet.train", "--help", cwd=tmp_path)
  assert train.returncode == 0, train.stderr
  headings = ["Data:", "Model (section 3):", "Augmentation (section 4.1):",
              "Optimization (section 5):", "Hardware and bookkeeping:"]
  positions = [train.stdout.index(h) for h in headings]
  assert positions == sorted(positions)
  assert train.stdout.index("--[no]lrn") > train.stdout.index("Model (section 3):")
  assert "--weight_decay" in train.stdout and "--strategy" in train.stdout
  assert _help_sections(train.stdout) == TRAIN_HELP_BEFORE_ISSUE_16
  # TensorFlow's C++ start-up lines (absl's "I0000 ..." and its pre-InitializeLog banner).
  for out in (build.stderr, train.stderr):
    assert "InitializeLog" not in out and "cpu_feature_guard" not in out, out


def test_a_users_tf_log_level_still_wins():
  env = tiny_data.child_env(TF_CPP_MIN_LOG_LEVEL="0")
  result = subprocess.run([sys.executable, "-c", "import keras_alexnet, os; "
                           "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "0"


FRESH_LOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import keras_alexnet   # registers the layers and PaperSGD
    model = keras.models.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], model(x, training=False).numpy())
    print(type(model.optimizer).__name__, model.optimizer.momentum,
          model.optimizer.paper_weight_decay)
""")


def test_a_keras_file_loads_in_a_fresh_process_after_import_keras_alexnet(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  from keras_alexnet import model as model_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import optimizer  # pylint: disable=g-import-not-at-top
  net = model_lib.alexnet(model_lib.ModelConfig(num_classes=10))
  net.compile(optimizer=optimizer.PaperSGD(momentum=0.8, weight_decay=0.001),
              loss="sparse_categorical_crossentropy")
  net.save(tmp_path / "alexnet.keras")
  x = np.random.default_rng(0).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  (tmp_path / "load.py").write_text(FRESH_LOAD)
  result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "alexnet.keras"),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], cwd=tmp_path,
                          env=tiny_data.child_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["PaperSGD", "0.8", "0.001"]
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), net(x, training=False).numpy(),
                             rtol=1e-5, atol=1e-6)
  keras.backend.clear_session()
