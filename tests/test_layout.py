"""The house rules that a reader relies on and a refactor can break silently: the package's
module-level imports form no cycle (each module can be read knowing only what it imports), no
module imports a later stage (README.md "The code, module by module" lists the same stages),
and a file the user keeps is written one way (keras_alexnet.files)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"keras_alexnet": os.path.join(ROOT, "keras_alexnet"),
            "tfrecords": os.path.join(ROOT, "tfrecords")}


def _modules():
  """{dotted name: path} of every module of the two packages."""
  found = {}
  for package, folder in PACKAGES.items():
    for dirpath, _, names in os.walk(folder):
      for name in names:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, name), folder)[:-3].replace(os.sep, ".")
          dotted = package if rel == "__init__" else f"{package}.{rel}"
          found[dotted.removesuffix(".__init__")] = os.path.join(dirpath, name)
  return found


# The stages of the data flow, first to last; a module may import its own stage and earlier
# ones. Shared helpers; the stored image and the dataset's description; the input pipeline;
# the device-side preprocessing; the network; a run (its settings, workdir, summaries); the
# loop; the commands and tools.
STAGES = [
    {"errors", "files", "cli", "bench", "_startup", "features", "data", "distribute",
     "workdir_lock", "bounded_input", "pil_loader", "decoding"},
    {"dataset_info"},
    {"data_sources"},
    {"dataset", "data_service"},
    {"preprocessing"},
    {"cpu_kernels", "layers", "model", "optimizer"},
    {"testing", "workdir", "finetune", "summaries", "config"},
    {"training"},
    {"train", "evaluate", "export", "predict", "extract", "convert", "applications", "demo",
     "demo_data", "benchmark", "pipeline_benchmark", "experiments", "experiments.compare",
     "experiments.figure4", "experiments.relu_vs_tanh", "keras_alexnet",
     "tfrecords", "tfrecords._alias", "tfrecords.benchmark", "tfrecords.build",
     "tfrecords.image", "tfrecords.releases", "tfrecords.safety", "tfrecords.sources",
     "tfrecords.statistics"},
]


def _short(module):
  return module.removeprefix("keras_alexnet.")


def _top_level_imports(name, path, modules, everywhere=False):
  """The package modules `name` imports at module level (everywhere=False: not inside
  functions, the deliberate late imports that keep start-up light; True: those too)."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  out = set()
  for node in (ast.walk(tree) if everywhere else tree.body):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      targets = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for target in targets:
      while target and target not in modules:
        target = target.rpartition(".")[0]
      # A package's own __init__ (imported by Python before any submodule) is not an edge.
      if target and target != name and not name.startswith(target + "."):
        out.add(target)
  return out


def test_the_module_imports_form_no_cycle():
  modules = _modules()
  assert "keras_alexnet.model" in modules and "tfrecords.build" in modules, sorted(modules)
  graph = {m: _top_level_imports(m, p, modules) for m, p in modules.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_every_module_has_a_stage_and_imports_no_later_one():
  """Late imports (inside functions) count too: a later stage is a later stage wherever it is
  imported from."""
  modules = _modules()
  rank = {m: i for i, stage in enumerate(STAGES) for m in stage}
  unstaged = sorted(_short(m) for m in modules if _short(m) not in rank)
  assert not unstaged, f"give these a stage in STAGES and README's map: {unstaged}"
  later = []
  for m, path in modules.items():
    for n in _top_level_imports(m, path, modules, everywhere=True):
      if rank[_short(n)] > rank[_short(m)]:
        later.append(f"{_short(m)} (stage {rank[_short(m)]}) imports {_short(n)} "
                     f"(stage {rank[_short(n)]})")
  assert not later, "\n".join(sorted(later))


def test_the_cycle_check_sees_a_cycle(tmp_path):
  """The checker itself: two modules importing each other are reported."""
  (tmp_path / "a.py").write_text("from pkg import b\n")
  (tmp_path / "b.py").write_text("from . import a\n")
  modules = {"pkg.a": str(tmp_path / "a.py"), "pkg.b": str(tmp_path / "b.py")}
  assert _top_level_imports("pkg.a", modules["pkg.a"], modules) == {"pkg.b"}
  assert _top_level_imports("pkg.b", modules["pkg.b"], modules) == {"pkg.a"}


def test_temporary_files_are_made_only_by_keras_alexnet_files():
  """mkstemp beside a target is the atomic writer's job; a second copy drifts (the project once
  had four, two of them without the umask's mode)."""
  offenders = []
  for name, path in _modules().items():
    if name != "keras_alexnet.files" and "mkstemp(" in open(path, encoding="utf-8").read():
      offenders.append(name)
  assert not offenders, offenders
