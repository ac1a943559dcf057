"""What an input path holds: the layout, the classes, and the labelled images of each split.

Three layouts, detected from what the path holds (or forced):
  ilsvrc_tars     PATH/ILSVRC2012_img_train.tar (1000 inner n*.tar) and/or
                  PATH/ILSVRC2012_img_val.tar (50,000 flat JPEGs), read in place: each image is
                  a byte range of the outer tar, found by walking the tar headers only.
  ilsvrc_folders  PATH/train/<wnid>/*.JPEG and PATH/val/ either flat (ILSVRC2012_val_*.JPEG,
                  labelled by the packaged ground truth or a label file) or in <wnid>/ folders.
  class_folders   PATH/<split>/<class>/**/*.{jpg,jpeg,png,bmp,gif,webp}, split one of
                  train, val, validation.

Labels are 0-based: the index of the class id in the sorted list of classes (the 1000 ILSVRC
wnids, the ids of --classes_file, or the class folder names).
"""

import collections
import dataclasses
import gzip
import io
import logging as _std_logging
import os
import re
import tarfile
import zlib
from typing import Callable, Iterable, Optional

from keras_alexnet import data as ilsvrc

LAYOUTS = ("auto", "ilsvrc_tars", "ilsvrc_folders", "class_folders")
SPLITS = ("train", "validation", "test")   # test: ILSVRC-2010 (tfrecords/releases.py)
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VALIDATION_TAR = "ILSVRC2012_img_val.tar"
# Folder names accepted for each split.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
VALIDATION_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
WNID = re.compile(r"n\d{8}")


class InputError(ValueError):
  """The input cannot be built as asked; the message says what was found and what is allowed."""


@dataclasses.dataclass(frozen=True, slots=True)   # slots: ImageNet lists 1.33 M of them
class Item:
  """One image to convert: where its bytes are and what it is."""
  filename: str      # image/filename: ILSVRC basename, or the path inside the split folder
  label: int
  path: str          # the file holding the bytes
  offset: int = 0    # the byte range inside `path` (a tar member); size -1: the whole file
  size: int = -1


@dataclasses.dataclass(frozen=True)
class Source:
  layout: str
  classes: tuple[tuple[str, str], ...]        # (class id, human name), in label order
  splits: dict[str, list[Item]]               # per split, sorted by filename
  rejected: dict[str, list[tuple[str, str]]]  # per split: (file, reason) skipped at listing


def read_bytes(item: Item) -> bytes:
  with open(item.path, "rb") as f:
    if item.size < 0:
      data = f.read()
    else:
      f.seek(item.offset)
      data = f.read(item.size)
  return _gunzipped(data)


_GZIP_MAGIC = b"\x1f\x8b"
_MAX_GUNZIPPED = 256 << 20   # no image is larger; a gzip bomb is cut here and then skipped


def _gunzipped(data: bytes) -> bytes:
  """Some ILSVRC-2010 images are gzip files of a JPEG (fuel's ILSVRC-2010 converter reads them
  so): the JPEG inside, or `data` itself when it is no (complete) gzip stream."""
  if not data.startswith(_GZIP_MAGIC):
    return data
  try:
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
      inner = f.read(_MAX_GUNZIPPED + 1)
  except (OSError, EOFError, zlib.error):
    return data
  return inner if len(inner) <= _MAX_GUNZIPPED else data


def _hidden(name: str) -> bool:
  return name.startswith(".") or name == "__MACOSX"


def _read_lines(path: str, what: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip() and not line.startswith("#")]
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"cannot read the {what} {path}: {e}") from None


def read_classes_file(path: str) -> tuple[tuple[str, str], ...]:
  """Lines 'id<TAB>human name' or 'id'; returned sorted by id (label = position)."""
  classes = {}
  for number, line in enumerate(_read_lines(path, "classes file"), 1):
    class_id, _, name = line.partition("\t")
    class_id, name = class_id.strip(), name.strip()
    if not class_id or any(c.isspace() for c in class_id):
      raise InputError(f"{path}:{number}: expected 'class_id<TAB>name' or 'class_id'; "
                       f"got {line!r}")
    if class_id in classes:
      raise InputError(f"{path}:{number}: class {class_id!r} is listed twice")
    classes[class_id] = name or class_id
  if not classes:
    raise InputError(f"the classes file {path} lists no classes")
  return tuple(sorted(classes.items()))


def _validation_labels(filenames: list[str], labels_file: Optional[str], ilsvrc_names: bool,
                       class_index: dict[str, int]) -> dict[str, int]:
  """Labels of flat validation images, from `labels_file` or the packaged ILSVRC truth.

  A labels file holds either one class id per line, in sorted file name order (the ILSVRC
  devkit's convention, one line per image), or 'filename class_id' per line.
  """
  if labels_file is None:
    if not ilsvrc_names:
      raise InputError(
          f"{len(filenames)} validation images lie directly in the validation folder, with no "
          f"class folders and no labels (e.g. {filenames[0]!r}). Pass "
          "--validation_labels_file=FILE (one class id per line in sorted file name order, "
          "or 'filename class_id' lines), or put them in <class>/ folders.")
    truth = ilsvrc.ilsvrc2012_validation_wnids()
    wnids = {}
    for name in filenames:
      match = VALIDATION_NAME.fullmatch(name)
      number = int(match.group(1)) if match else 0
      if not 1 <= number <= len(truth):
        raise InputError(
            f"validation image {name!r} has no packaged ILSVRC-2012 label (names must be "
            f"ILSVRC2012_val_00000001.JPEG .. _{len(truth):08d}.JPEG); pass "
            "--validation_labels_file=FILE")
      wnids[name] = truth[number - 1]
  else:
    lines = _read_lines(labels_file, "validation labels file")
    fields = [line.replace(",", " ").split() for line in lines]
    if all(len(f) == 1 for f in fields):
      if len(lines) != len(filenames):
        raise InputError(
            f"{labels_file} has {len(lines)} labels, one per line, but the validation folder "
            f"has {len(filenames)} images; with one label per line there must be exactly one "
            "per image, in sorted file name order ('filename class_id' lines label a subset)")
      wnids = dict(zip(sorted(filenames), (f[0] for f in fields)))
    elif all(len(f) == 2 for f in fields):
      given = {os.path.basename(f[0]): f[1] for f in fields}
      missing = [name for name in filenames if os.path.basename(name) not in given]
      if missing:
        raise InputError(f"{labels_file} has no label for {len(missing)} validation images, "
                         f"e.g. {missing[0]!r}")
      wnids = {name: given[os.path.basename(name)] for name in filenames}
    else:
      raise InputError(f"{labels_file}: expected 'class_id' or 'filename class_id' on every "
                       "line (not a mix)")
  unknown = sorted({w for w in wnids.values() if w not in class_index})
  if unknown:
    hint = (" (integers are ambiguous: the devkit's 1-based ILSVRC2012_IDs are not in sorted "
            "wnid order; give wnids)" if unknown[0].isdigit() else "")
    raise InputError(f"validation labels name {len(unknown)} unknown classes, e.g. "
                     f"{unknown[0]!r}{hint}")
  return {name: class_index[w] for name, w in wnids.items()}


def _inside(path: str, root: str) -> bool:
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_class_folder(top: str, folder: str, root: str, follow_outside: bool, seen: set,
                       rejected: list) -> list[str]:
  """The files under `top` as paths relative to `folder`, in sorted order, each real file and
  folder once.

  Symbolic links are followed, but a folder already visited (a link cycle, or two links to one
  folder: same st_dev and st_ino) is not entered again, a file already listed is not listed
  again, and a link whose target is outside `root` (the input folder) is not followed unless
  follow_outside; each refused link goes to `rejected` as (relative path, reason)."""
  files = []
  stack = [(top, os.stat(top).st_dev)]
  while stack:
    current, device = stack.pop()
    prefix = os.path.relpath(current, folder).replace(os.sep, "/") + "/"
    try:
      entries = sorted(os.scandir(current), key=lambda e: e.name)
    except OSError as e:
      rejected.append((prefix[:-1], f"cannot list the folder: {e.strerror}"))
      continue
    subdirs, links = [], []
    for entry in entries:   # the hot loop (ImageNet: 1.3 M files): plain files first, no stat
      name = entry.name
      if name[0] == "." or name == "__MACOSX":
        continue
      if entry.is_symlink():
        links.append(entry)   # after the real entries: a file and a link to it list the file
      elif entry.is_dir():
        subdirs.append(entry)
      else:
        key = (device, entry.inode())   # a hard link to a listed file has the same inode
        if key in seen:
          rejected.append((prefix + name, _SEEN))
        else:
          seen.add(key)
          files.append(prefix + name)
    next_dirs = []
    for entry in subdirs + links:
      relative = prefix + entry.name
      try:
        if entry.is_symlink():
          target = os.path.realpath(entry.path)
          if not follow_outside and not _inside(target, root):
            rejected.append((relative, f"symbolic link to {target}, outside the input folder "
                                       f"{root} (pass --follow_outside_links to follow it)"))
            continue
        info = os.stat(entry.path)   # follows links
      except OSError as e:
        rejected.append((relative, f"cannot read: {e.strerror or e} (a broken link?)"))
        continue
      key = (info.st_dev, info.st_ino)
      if key in seen:
        rejected.append((relative, _SEEN))
        continue
      seen.add(key)
      if entry.is_dir():
        next_dirs.append((entry.path, info.st_dev))
      else:
        files.append(relative)
    stack.extend(reversed(sorted(next_dirs)))   # depth first, in name order
  return sorted(files)


_SEEN = ("the same file or folder as one listed before (a link or hard link to it, or a link "
         "cycle): listed once")


def _scan_split_folder(folder: str, follow_outside: bool = False, rejected: list = None,
                       root: str = None) -> tuple[dict[str, list[str]], list[str]]:
  """({class folder: [paths relative to `folder`]}, [files directly in `folder`]).

  Links out of `root` (default: the folder holding `folder`, i.e. --input) and repeated files
  are left out and reported in `rejected` (see _walk_class_folder)."""
  rejected = [] if rejected is None else rejected
  root = os.path.realpath(root or os.path.dirname(os.path.abspath(folder)))
  seen = {(s.st_dev, s.st_ino) for s in [os.stat(folder)]}
  classes, flat = {}, []
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if _hidden(entry.name):
      continue
    if entry.is_symlink() and not follow_outside and not _inside(
        os.path.realpath(entry.path), root):
      rejected.append((entry.name, f"symbolic link to {os.path.realpath(entry.path)}, outside "
                                   f"the input folder {root} (pass --follow_outside_links to "
                                   "follow it)"))
      continue
    if entry.is_dir():
      key = (os.stat(entry.path).st_dev, os.stat(entry.path).st_ino)
      if key in seen:
        rejected.append((entry.name, "the same folder as one listed before: listed once"))
        continue
      seen.add(key)
      classes[entry.name] = _walk_class_folder(entry.path, folder, root, follow_outside, seen,
                                               rejected)
    elif entry.is_file():
      flat.append(entry.name)
  return classes, flat


def _check_empty_classes(folder: str, class_files: dict, allow: bool) -> None:
  """A class folder without images makes a class no image teaches: an error (or a warning)."""
  empty = [c for c, files in class_files.items()
           if not any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in files)]
  if not empty:
    return
  message = (f"{len(empty)} class folder(s) in {folder} hold no images "
             f"({', '.join(IMAGE_EXTENSIONS)}), e.g. {os.path.join(folder, empty[0])}")
  if not allow:
    raise InputError(message + ". Add images, remove the folder, or pass "
                     "--allow_empty_classes to build it as a class without images.")
  _std_logging.getLogger("absl").warning("%s; built as classes without images "
                                         "(--allow_empty_classes).", message)


def _split_folders(path: str) -> dict[str, str]:
  found = {}
  for split, names in SPLIT_FOLDERS.items():
    present = [n for n in names if os.path.isdir(os.path.join(path, n))]
    if len(present) > 1:
      raise InputError(f"{path} has both {present[0]}/ and {present[1]}/; keep one "
                       "validation folder")
    if present:
      found[split] = os.path.join(path, present[0])
  return found


def _class_table(classes) -> dict[str, int]:
  return {class_id: index for index, (class_id, _) in enumerate(classes)}


def detect_layout(path: str, classes_file: Optional[str] = None) -> str:
  """The layout `path` holds; InputError naming what was found when it matches none."""
  if not os.path.exists(path):
    raise InputError(f"--input={path} does not exist")
  if not os.path.isdir(path):
    raise InputError(f"--input={path} is a file; pass the folder that holds "
                     f"{TRAIN_TAR} / {VALIDATION_TAR}, or train/ and val/ folders")
  if any(os.path.isfile(os.path.join(path, t)) for t in (TRAIN_TAR, VALIDATION_TAR)):
    return "ilsvrc_tars"
  folders = _split_folders(path)
  if not folders:
    entries = sorted(e for e in os.listdir(path) if not _hidden(e))[:8]
    raise InputError(
        f"--input={path} matches no layout. Expected one of: {TRAIN_TAR} and/or "
        f"{VALIDATION_TAR} (ILSVRC-2012 as downloaded); train/<wnid>/*.JPEG and val/ "
        "(ILSVRC-2012 extracted); <split>/<class>/*.{jpg,jpeg,png,bmp,gif,webp} with split "
        f"train, val or validation (any class-folder dataset). Found: {entries or 'nothing'}")
  known = (set(c for c, _ in read_classes_file(classes_file)) if classes_file
           else set(c for c, _ in ilsvrc.ilsvrc2012_classes()))
  class_names, flat = set(), []
  for split, folder in folders.items():
    names, files = _scan_split_folder(folder)
    class_names.update(names)
    if split == "validation":
      flat = files
  ilsvrc_flat = bool(flat) and all(VALIDATION_NAME.fullmatch(n) for n in flat)
  if (class_names or ilsvrc_flat) and class_names <= known and all(
      WNID.fullmatch(c) for c in class_names):
    return "ilsvrc_folders"
  return "class_folders"


def _list_tar(path: str) -> list[tarfile.TarInfo]:
  try:
    with tarfile.open(path, "r:") as tar:
      return [m for m in tar.getmembers() if m.isfile()]
  except (OSError, tarfile.TarError) as e:
    raise InputError(f"cannot read the tar {path}: {e}") from None


def list_inner_tar(args: tuple[str, int, str]) -> tuple[str, list[tuple[str, int, int]]]:
  """(outer tar, inner tar's data offset, wnid) -> (wnid, [(name, offset, size)]).

  TarFile takes the file position at open as its origin, so member offsets come out as
  positions in the outer file: each image is then one pread away, nothing is extracted.
  """
  path, offset, wnid = args
  with open(path, "rb") as f:
    f.seek(offset)
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        members = [(os.path.basename(m.name), m.offset_data, m.size)
                   for m in tar.getmembers() if m.isfile()]
    except tarfile.TarError as e:
      raise InputError(f"{path}: the class tar {wnid}.tar is not a readable tar: {e}") from None
  return wnid, members


def _from_tars(path: str, classes, validation_labels_file, map_fn) -> tuple[dict, dict]:
  index = _class_table(classes)
  splits, rejected = {}, {}
  train_tar = os.path.join(path, TRAIN_TAR)
  if os.path.isfile(train_tar):
    inner, rejected["train"] = [], []
    for member in _list_tar(train_tar):
      wnid, ext = os.path.splitext(os.path.basename(member.name))
      if ext != ".tar" or wnid not in index:
        rejected["train"].append((member.name, f"not a class tar of a known wnid in {TRAIN_TAR}"))
      else:
        inner.append((train_tar, member.offset_data, wnid))
    splits["train"] = [Item(name, index[wnid], train_tar, offset, size)
                       for wnid, members in map_fn(list_inner_tar, inner)
                       for name, offset, size in members]
  validation_tar = os.path.join(path, VALIDATION_TAR)
  if os.path.isfile(validation_tar):
    members = {os.path.basename(m.name): m for m in _list_tar(validation_tar)}
    names = sorted(members)
    labels = _validation_labels(
        names, validation_labels_file,
        all(VALIDATION_NAME.fullmatch(n) for n in names), index) if names else {}
    splits["validation"] = [Item(n, labels[n], validation_tar, members[n].offset_data,
                                 members[n].size) for n in names]
    rejected["validation"] = []
  return splits, rejected


def _from_folders(path: str, layout: str, classes, validation_labels_file,
                  allow_empty_classes: bool = False,
                  follow_outside_links: bool = False) -> tuple[dict, dict]:
  index = _class_table(classes)
  splits, rejected = {}, {}
  for split, folder in _split_folders(path).items():
    refused = []
    class_files, flat = _scan_split_folder(folder, follow_outside_links, refused, path)
    _check_empty_classes(folder, class_files, allow_empty_classes)
    unknown = sorted(set(class_files) - set(index))
    if unknown:
      raise InputError(
          f"{folder} has class folders not in the class list, e.g. {unknown[0]!r}"
          + (" (not an ILSVRC-2012 wnid: pass --layout=class_folders, or --classes_file)"
             if layout == "ilsvrc_folders" else " (pass a --classes_file that lists them)"))
    items, rejected[split] = [], list(refused)

    def add(relative: str, label: int) -> None:
      filename = os.path.basename(relative) if layout == "ilsvrc_folders" else relative
      if os.path.splitext(relative)[1].lower() not in IMAGE_EXTENSIONS:
        rejected[split].append(
            (filename, f"not an image file name (allowed: {', '.join(IMAGE_EXTENSIONS)})"))
      else:
        items.append(Item(filename, label, os.path.join(folder, relative)))

    for class_id, files in class_files.items():
      for relative in files:
        add(relative, index[class_id])
    if flat:
      if split == "train":
        raise InputError(f"{folder} holds files outside class folders (e.g. {flat[0]!r}); "
                         "training images must be in <class>/ folders")
      named = [n for n in flat if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
      labels = _validation_labels(
          named, validation_labels_file,
          layout == "ilsvrc_folders" and all(VALIDATION_NAME.fullmatch(n) for n in named),
          index) if named else {}
      for name in flat:
        add(name, labels.get(name, -1))
    splits[split] = items
  return splits, rejected


def find_source(path: str, layout: str = "auto", classes_file: Optional[str] = None,
                validation_labels_file: Optional[str] = None,
                map_fn: Callable[[Callable, Iterable], Iterable] = map,
                allow_empty_classes: bool = False,
                follow_outside_links: bool = False) -> Source:
  """Lists the labelled images under `path`.

  Args:
    path: the input folder.
    layout: one of LAYOUTS; "auto" detects it.
    classes_file: 'id<TAB>name' lines replacing the packaged 1000 ILSVRC classes (or, for
      class folders, naming them).
    validation_labels_file: labels for a flat validation folder (see _validation_labels).
    map_fn: a map over the inner tars of the training tar (e.g. a process pool's map).
    allow_empty_classes: a class folder without images is a warning, not an InputError.
    follow_outside_links: follow symbolic links whose targets are outside `path`.

  Raises:
    InputError: the path is missing, matches no layout, or has images without labels.
  """
  if layout not in LAYOUTS:
    raise InputError(f"--layout={layout} is not one of {', '.join(LAYOUTS)}")
  detected = detect_layout(path, classes_file)
  if layout == "auto":
    layout = detected
  elif (layout == "ilsvrc_tars") != (detected == "ilsvrc_tars"):
    raise InputError(f"--layout={layout} but {path} holds the {detected} layout")

  if layout == "class_folders":
    found = set()
    for folder in _split_folders(path).values():
      found.update(_scan_split_folder(folder, follow_outside_links, root=path)[0])
    if classes_file:
      classes = read_classes_file(classes_file)
    else:
      names = dict(ilsvrc.ilsvrc2012_classes())
      classes = tuple((c, names.get(c, c)) for c in sorted(found))
  else:
    classes = (read_classes_file(classes_file) if classes_file
               else ilsvrc.ilsvrc2012_classes())

  if layout == "ilsvrc_tars":
    splits, rejected = _from_tars(path, classes, validation_labels_file, map_fn)
  else:
    splits, rejected = _from_folders(path, layout, classes, validation_labels_file,
                                     allow_empty_classes, follow_outside_links)

  for split, items in splits.items():
    items.sort(key=lambda item: item.filename)
    duplicates = [n for n, c in collections.Counter(i.filename for i in items).items() if c > 1]
    if duplicates:
      raise InputError(f"{split}: {len(duplicates)} file names occur twice, e.g. "
                       f"{duplicates[0]!r}; image/filename must identify an image")
    rejected[split].sort()
  if not any(splits.values()):
    raise InputError(f"--input={path} ({layout}) holds no images")
  return Source(layout=layout, classes=tuple(classes), splits=splits, rejected=rejected)
