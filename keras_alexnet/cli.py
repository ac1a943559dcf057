"""What every command does around its main(): flagfiles found from any directory, the
command's own flags in --help, grouped, and the exit.

A flagfile is named by a path (relative to the working directory) or by a recipe shipped with
the package: `flags/paper.cfg`, `paper.cfg` and `paper` all name the shipped flags/paper.cfg,
`ablations/no_lrn` its ablation. Flagfiles are expanded here, before absl parses the command
line, so that a recipe's nested `--flagfile=flags/paper.cfg` works after `pip install` from any
directory too (absl itself would read it relative to the working directory).
"""

import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Installed: the package's own copy (setup.py ships flags/ as keras_alexnet/flags). A checkout
# (editable install included): the top-level flags/ beside the package.
RECIPES_DIR = next((d for d in (os.path.join(_PACKAGE, "flags"),
                                os.path.join(os.path.dirname(_PACKAGE), "flags"))
                    if os.path.isdir(d)), os.path.join(_PACKAGE, "flags"))
_FLAGFILE = "--flagfile"
_MAX_DEPTH = 20   # nested includes; a file that includes itself would recurse for ever


def builder_module() -> str:
  """The dataset builder's module: the checkout's tfrecords.build (editable installs included),
  else keras_alexnet.tfrecords.build, where a wheel installed it (setup.py)."""
  if os.path.isdir(os.path.join(_PACKAGE, "tfrecords")):
    return "keras_alexnet.tfrecords.build"
  return "tfrecords.build"


def recipes() -> List[str]:
  """The shipped recipes, as names relative to flags/ ("paper.cfg", "ablations/no_lrn.cfg")."""
  found = []
  for root, dirs, files in os.walk(RECIPES_DIR):
    dirs.sort()
    found += sorted(os.path.relpath(os.path.join(root, f), RECIPES_DIR)
                    for f in files if f.endswith(".cfg"))
  return found


def resolve_flagfile(name: str) -> str:
  """The file `name` refers to: the path itself if it exists, else the shipped recipe of that
  name; ValueError naming what was received and listing the recipes otherwise."""
  if os.path.isfile(name):
    return os.path.abspath(name)
  recipe = name.replace(os.sep, "/")
  if recipe.startswith("flags/"):
    recipe = recipe[len("flags/"):]
  if not recipe.endswith(".cfg"):
    recipe += ".cfg"
  path = os.path.join(RECIPES_DIR, *recipe.split("/"))
  if os.path.isfile(path):
    return path
  raise ValueError(
      f"flagfile {name!r} is neither a file (looked in {os.getcwd()}) nor a shipped recipe; "
      f"the recipes are {', '.join(r[:-len('.cfg')] for r in recipes())} (e.g. "
      "--flagfile=flags/paper.cfg or --flagfile=paper).")


def expand_flagfiles(argv: Sequence[str], _depth: int = 0, _source: str = "the command line"
                     ) -> List[str]:
  """argv with every --flagfile=F (or `--flagfile F`) replaced by F's flags, recursively, in
  place, so later flags still override earlier ones. absl's flagfile syntax: one flag a line;
  blank lines and lines starting with # or // are ignored."""
  if _depth > _MAX_DEPTH:
    raise ValueError(f"flagfiles nested more than {_MAX_DEPTH} deep at {_source}: does one "
                     "include itself?")
  out, args = [], list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--":
      out += args[i:]
      break
    name = None
    if arg.startswith(_FLAGFILE + "="):
      name = arg[len(_FLAGFILE) + 1:]
    elif arg == _FLAGFILE and i + 1 < len(args):
      name, i = args[i + 1], i + 1
    if name is None:
      out.append(arg)
    else:
      path = resolve_flagfile(name)
      with open(path) as f:
        lines = [line.strip() for line in f]
      for number, line in enumerate(lines, 1):
        if line and not line.startswith(("#", "//")) and not line.startswith("-"):
          raise ValueError(f"{path}:{number}: {line!r} is not a flag (each line of a "
                           "flagfile is --name=value, a comment starting with #, or blank).")
      out += expand_flagfiles([line for line in lines if line.startswith("-")], _depth + 1,
                              path)
    i += 1
  return out


# --- --help: the command's own flags, in groups --------------------------------------------

def _own_flags(modules: Sequence[str]) -> List[str]:
  by_module = flags.FLAGS.flags_by_module_dict()
  names = []
  for module in modules:
    for flag in by_module.get(module, []):
      if flag.name not in names:
        names.append(flag.name)
  return names


_HELP = ("--help", "-help", "-h", "-?", "--helpshort")


def _help_text(doc: str, groups: Sequence[Tuple[str, Sequence[str]]],
               modules: Sequence[str]) -> str:
  """The command's docstring, then its own flags: in the named groups (headed sections), and
  the rest under the module that defines them. absl's own --help lists only the key flags of
  the main module, and a command's flags are defined in library modules (config.py, the
  builder), so it listed none of the builder's."""
  fv = flags.FLAGS
  own = _own_flags(modules)
  listed = set()
  sections = []
  for title, names in groups:
    present = [n for n in names if n in own]
    for name in present:
      fv.register_key_flag_for_module(title, fv[name])
    if present:
      sections.append(fv.module_help(title))
    listed.update(present)
  rest = [n for n in own if n not in listed]
  if rest:
    title = "Other flags" if groups else " ".join(modules)
    for name in rest:
      fv.register_key_flag_for_module(title, fv[name])
    sections.append(fv.module_help(title))
  sections.append("--helpfull lists every flag, absl's and TensorFlow's included.")
  return "\n\n".join([doc.strip()] + sections) + "\n"


def run(main: Callable, define_flags: Optional[Callable[[], None]] = None,
        modules: Sequence[str] = (), groups: Sequence[Tuple[str, Sequence[str]]] = ()) -> None:
  """Runs a command: defines its flags, expands flagfiles, registers --help, calls absl's
  app.run(main). `modules` are the modules whose flags are the command's own (by default the
  one that defines them); `groups` orders them under headings in --help."""
  before = set(flags.FLAGS)
  if define_flags is not None:
    define_flags()
  if not modules:
    defined = set(flags.FLAGS) - before
    by_module = flags.FLAGS.flags_by_module_dict()
    modules = [m for m, fl in by_module.items() if any(f.name in defined for f in fl)]
  try:
    argv = expand_flagfiles(sys.argv[1:])
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  if any(arg in _HELP for arg in argv):
    doc = sys.modules[main.__module__].__doc__ or ""
    sys.stdout.write(_help_text(doc, groups, modules))
    sys.exit(0)
  app.run(main, argv=[sys.argv[0]] + argv)


class Progress:
  """'fc7 1,234/5,000 images (24.7%) 41.0 images/s ETA 0:01:31' on stderr (`what` first, if
  any): redrawn in place on a terminal, one line every 30 s otherwise (log files)."""

  def __init__(self, total: int, what: str, enabled: bool = True, unit: str = "images"):
    self.total, self.what, self.unit = total, what, unit
    self.enabled = enabled and total > 0
    self.tty = sys.stderr.isatty()
    self.start = self.last = time.monotonic()
    self.done = 0

  def update(self, done: int, final: bool = False) -> None:
    self.done = done
    now = time.monotonic()
    if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 30)):
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = int((self.total - done) / rate) if rate > 0 else 0
    line = ((f"{self.what} " if self.what else "")
            + f"{done:,}/{self.total:,} {self.unit} ({100 * done / self.total:.1f}%) "
            f"{rate:,.1f} {self.unit}/s ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")
    print(("\r" if self.tty else "") + line, end="\n" if final or not self.tty else "",
          file=sys.stderr, flush=True)
