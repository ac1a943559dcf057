"""ImageNet releases besides ILSVRC-2012, and a seeded validation hold-out for datasets without
a validation split.

Two more layouts for `python -m tfrecords.build --input=PATH`:
  fall2011    The ImageNet Fall 2011 release the paper pre-trains on (section 6: "the entire
              ImageNet Fall 2011 release (15M images, 22K categories)"): fall11_whole.tar, a
              tar of per-synset tars <wnid>.tar (any number, in any order), given as --input
              itself or inside the --input folder; or that tar extracted, a folder of <wnid>.tar
              files or of <wnid>/ image folders. Labels are the sorted wnids found; names come
              from --classes_file (ImageNet's words.txt: 'wnid<TAB>names' lines, it may list
              more synsets than the release holds), else the wnid. It has no validation split:
              --validation_fraction holds out a seeded share of every class.
  ilsvrc2010  ILSVRC-2010 (the paper's Table 1, the only year with public test labels):
              ILSVRC2010_images_train.tar (per-synset tars), ILSVRC2010_images_val.tar
              (ILSVRC2010_val_00000001.JPEG ...), ILSVRC2010_images_test.tar
              (ILSVRC2010_test_00000001.JPEG ...), and the devkit's files: meta.mat (synsets with
              ILSVRC2010_ID 1..1000, WNID, words; read with scipy, an optional dependency) or a
              text mapping meta.txt ('ILSVRC2010_ID wnid [words]' lines),
              ILSVRC2010_validation_ground_truth.txt and ILSVRC2010_test_ground_truth.txt (one
              ILSVRC2010_ID per line, in sorted image file name order). The files are found in
              --input or its subfolders (the devkit's data/), or given by flags. Labels are the
              index of the wnid in the sorted 1000 wnids (as for ILSVRC-2012); the test split is
              written as test-NNNNN-of-NNNNN shards. patch_images.tar beside the tars (the
              challenge's replacements for broken images) is applied; images stored gzipped
              are unpacked (sources.read_bytes).
"""

import math
import os
import random
import re
from typing import Callable, Iterable, Optional

from . import sources
from .sources import InputError, Item, Source

LAYOUTS = sources.LAYOUTS + ("fall2011", "ilsvrc2010")
FALL2011_TAR = "fall11_whole.tar"
ILSVRC2010_TARS = {"train": "ILSVRC2010_images_train.tar",
                   "validation": "ILSVRC2010_images_val.tar",
                   "test": "ILSVRC2010_images_test.tar"}
ILSVRC2010_GROUND_TRUTH = {"validation": "ILSVRC2010_validation_ground_truth.txt",
                           "test": "ILSVRC2010_test_ground_truth.txt"}
ILSVRC2010_IMAGE = {"validation": re.compile(r"ILSVRC2010_val_(\d{8})\.JPEG"),
                    "test": re.compile(r"ILSVRC2010_test_(\d{8})\.JPEG")}
# Other spellings of the three tars (a mirror's renaming): ILSVRC2010*train*.tar etc.
_ILSVRC2010_TAR_PATTERN = {"train": re.compile(r"ILSVRC2010.*train.*\.tar"),
                           "validation": re.compile(r"ILSVRC2010.*val.*\.tar"),
                           "test": re.compile(r"ILSVRC2010.*test.*\.tar")}
META_FILES = ("meta.mat", "meta.txt")
# Replacements for images of the three tars that are blank or show an "image not available"
# banner, distributed beside them; members .../train/<name>.JPEG, .../val/..., .../test/...
# (as fuel's ILSVRC-2010 converter reads it).
ILSVRC2010_PATCH_TAR = "patch_images.tar"
_PATCH_FOLDER = {"train": "train", "validation": "val", "test": "test"}
_DEVKIT_DEPTH = 3   # how deep under --input the devkit files are looked for (devkit-1.0/data/)


def detect(path: str) -> Optional[str]:
  """"fall2011" or "ilsvrc2010" when `path` holds one of these releases, else None."""
  if os.path.isfile(path):
    return "fall2011" if path.endswith(".tar") else None
  if not os.path.isdir(path):
    return None
  names = [n for n in os.listdir(path) if not n.startswith(".")]
  if any(_ilsvrc2010_tar(path, split) for split in ILSVRC2010_TARS):
    return "ilsvrc2010"
  if FALL2011_TAR in names:
    return "fall2011"
  if sources._split_folders(path):   # train/ val/: the ILSVRC-2012 or class-folder layouts
    return None
  if _fall2011_tar(path):
    return "fall2011"
  wnids = [n for n in names if sources.WNID.fullmatch(os.path.splitext(n)[0])]
  if wnids and (all(n.endswith(".tar") for n in wnids)
                or all(os.path.isdir(os.path.join(path, n)) for n in wnids)):
    return "fall2011"
  return None


def _ilsvrc2010_tar(path: str, split: str) -> Optional[str]:
  """The split's tar in `path`: its devkit name, else the one file named like it."""
  exact = os.path.join(path, ILSVRC2010_TARS[split])
  if os.path.isfile(exact):
    return exact
  found = [n for n in sorted(os.listdir(path)) if _ILSVRC2010_TAR_PATTERN[split].fullmatch(n)
           and not (split == "train" and "val" in n) and os.path.isfile(os.path.join(path, n))]
  return os.path.join(path, found[0]) if len(found) == 1 else None


def _fall2011_tar(path: str) -> Optional[str]:
  """fall11_whole.tar in `path`, else its one .tar file if that is not another release's and
  not a synset's own tar (then the folder is the release extracted)."""
  if os.path.isfile(os.path.join(path, FALL2011_TAR)):
    return os.path.join(path, FALL2011_TAR)
  tars = [n for n in os.listdir(path) if n.endswith(".tar") and not n.startswith(".")]
  if (len(tars) == 1 and not sources.WNID.fullmatch(tars[0][:-4])
      and not tars[0].startswith("ILSVRC")):
    return os.path.join(path, tars[0])
  return None


def find_source(path: str, layout: str = "auto", classes_file: Optional[str] = None,
                validation_labels_file: Optional[str] = None,
                test_labels_file: Optional[str] = None, meta_file: Optional[str] = None,
                validation_fraction: Optional[float] = None, seed: int = 0,
                map_fn: Callable[[Callable, Iterable], Iterable] = map,
                devkit_dir: Optional[str] = None, allow_empty_classes: bool = False,
                follow_outside_links: bool = False) -> Source:
  """sources.find_source, with the fall2011 and ilsvrc2010 layouts and the hold-out."""
  if layout not in LAYOUTS:
    raise InputError(f"--layout={layout} is not one of {', '.join(LAYOUTS)}")
  check_fraction(validation_fraction)
  detected = detect(path) if os.path.exists(path) else None
  if layout in ("fall2011", "ilsvrc2010") and detected != layout:
    raise InputError(f"--layout={layout} but {path} holds "
                     + (f"the {detected} layout" if detected else
                        "neither fall11_whole.tar / <wnid>.tar / <wnid>/ folders (fall2011) "
                        f"nor {', '.join(ILSVRC2010_TARS.values())} (ilsvrc2010)"))
  if layout == "auto" and detected:
    layout = detected
  if layout == "fall2011":
    source = fall2011_source(path, classes_file, map_fn)
  elif layout == "ilsvrc2010":
    source = ilsvrc2010_source(path, meta_file, validation_labels_file, test_labels_file,
                               map_fn, devkit_dir)
  else:
    if test_labels_file or meta_file or devkit_dir:
      raise InputError(f"--test_labels_file, --meta_file and --devkit_dir belong to the "
                       f"ilsvrc2010 layout; {path} is not one")
    source = sources.find_source(path, layout, classes_file, validation_labels_file, map_fn,
                                 allow_empty_classes=allow_empty_classes,
                                 follow_outside_links=follow_outside_links)
  if validation_fraction is not None:
    source = hold_out(source, validation_fraction, seed)
  return source


# ---------------------------------------------------------------------------------------------
# --validation_fraction


def check_fraction(fraction: Optional[float]) -> None:
  if fraction is not None and not 0 < fraction < 1:
    raise InputError(f"--validation_fraction={fraction} must be in (0, 1) exclusive: the share "
                     "of each class's training images held out for validation")


def held_out_count(num_images: int, fraction: float) -> int:
  """Images of a class of `num_images` that go to validation: the fraction rounded half up
  (the 1e-9 absorbs float error, so 0.3 of 10 is 3), at most all but one."""
  return min(int(math.floor(fraction * num_images + 0.5 + 1e-9)), max(num_images - 1, 0))


def hold_out(source: Source, fraction: float, seed: int = 0) -> Source:
  """A validation split drawn from the training split: of each class, held_out_count images,
  chosen by a shuffle seeded with (seed, class id), so the same seed holds out the same
  images whatever the order the files were found in."""
  check_fraction(fraction)
  if source.splits.get("validation"):
    raise InputError(
        f"--validation_fraction={fraction} with a dataset that has a validation split "
        f"({len(source.splits['validation']):,} images, {source.layout} layout): the hold-out "
        "is for datasets without one (Fall 2011, class folders with only train/). Drop the "
        "flag, or the validation folder")
  if not source.splits.get("train"):
    raise InputError(f"--validation_fraction={fraction}: the dataset has no training images to "
                     "hold out from")
  by_class = {}
  for item in source.splits["train"]:
    by_class.setdefault(item.label, []).append(item)
  train, validation = [], []
  for label in sorted(by_class):
    items = sorted(by_class[label], key=lambda i: i.filename)
    random.Random(f"{seed}/holdout/{source.classes[label][0]}").shuffle(items)
    count = held_out_count(len(items), fraction)
    validation.extend(items[:count])
    train.extend(items[count:])
  train.sort(key=lambda i: i.filename)
  validation.sort(key=lambda i: i.filename)
  rejected = dict(source.rejected)
  rejected.setdefault("validation", [])
  return Source(layout=source.layout, classes=source.classes,
                splits={**source.splits, "train": train, "validation": validation},
                rejected=rejected)


# ---------------------------------------------------------------------------------------------
# Fall 2011


def _synset_tars(tar_path: str, where: str) -> tuple[list, list]:
  """([(tar, data offset, wnid)] of the per-synset tars in `tar_path`, [(member, reason)])."""
  inner, rejected = [], []
  for member in sources._list_tar(tar_path):
    wnid, ext = os.path.splitext(os.path.basename(member.name))
    if ext != ".tar" or not sources.WNID.fullmatch(wnid):
      rejected.append((member.name, f"not a per-synset tar <wnid>.tar in {where}"))
    else:
      inner.append((tar_path, member.offset_data, wnid))
  return inner, rejected


def fall2011_source(path: str, classes_file: Optional[str] = None,
                    map_fn: Callable = map) -> Source:
  """The Fall 2011 release (see the module docstring) as one training split."""
  rejected = []
  if os.path.isfile(path) or _fall2011_tar(path):
    tar = path if os.path.isfile(path) else _fall2011_tar(path)
    inner, rejected = _synset_tars(tar, os.path.basename(tar))
    listed = list(map_fn(sources.list_inner_tar, inner))
    by_wnid = {}
    for wnid, members in listed:
      if wnid in by_wnid:
        raise InputError(f"{tar} holds two tars of synset {wnid}")
      by_wnid[wnid] = [(name, tar, offset, size) for name, offset, size in members]
  else:
    by_wnid = {}
    tars = sorted(n for n in os.listdir(path) if n.endswith(".tar")
                  and sources.WNID.fullmatch(n[:-4]))
    if tars:
      for wnid, members in map_fn(sources.list_inner_tar,
                                  [(os.path.join(path, n), 0, n[:-4]) for n in tars]):
        by_wnid[wnid] = [(name, os.path.join(path, wnid + ".tar"), offset, size)
                         for name, offset, size in members]
    else:
      folders, flat = sources._scan_split_folder(path)
      for wnid, files in folders.items():
        if not sources.WNID.fullmatch(wnid):
          rejected.append((wnid, "not a synset folder <wnid>/"))
          continue
        by_wnid[wnid] = [(os.path.basename(f), os.path.join(path, f), 0, -1) for f in files]
      rejected.extend((n, "a file outside the synset folders") for n in flat)
  if not by_wnid:
    raise InputError(f"--input={path} (fall2011) holds no per-synset tars or folders "
                     "(<wnid>.tar, <wnid>/, wnid as n12345678)")
  names = read_words_file(classes_file) if classes_file else {}
  classes = tuple((wnid, names.get(wnid, wnid)) for wnid in sorted(by_wnid))
  items = []
  for label, (wnid, _) in enumerate(classes):
    for name, file, offset, size in by_wnid[wnid]:
      if os.path.splitext(name)[1].lower() not in sources.IMAGE_EXTENSIONS:
        rejected.append((name, "not an image file name (allowed: "
                         f"{', '.join(sources.IMAGE_EXTENSIONS)})"))
      else:
        items.append(Item(name, label, file, offset, size))
  return _finish(path, "fall2011", classes, {"train": items}, {"train": rejected})


def read_words_file(path: str) -> dict:
  """{wnid: names} from ImageNet's words.txt ('wnid<TAB>names', or any whitespace after the
  wnid); lines that do not start with a wnid are refused, naming the line."""
  names = {}
  for number, line in enumerate(sources._read_lines(path, "classes (words) file"), 1):
    fields = line.split(None, 1)
    if not sources.WNID.fullmatch(fields[0]):
      raise InputError(f"{path}:{number}: expected 'wnid<TAB>names' (e.g. 'n00001740<TAB>"
                       f"entity'); got {line!r}")
    names[fields[0]] = fields[1].strip() if len(fields) > 1 else fields[0]
  return names


def _finish(path, layout, classes, splits, rejected) -> Source:
  for split, items in splits.items():
    items.sort(key=lambda item: item.filename)
    seen = set()
    for item in items:
      if item.filename in seen:
        raise InputError(f"{split}: the file name {item.filename!r} occurs twice in {path}; "
                         "image/filename must identify an image")
      seen.add(item.filename)
    rejected.setdefault(split, []).sort()
  if not any(splits.values()):
    raise InputError(f"--input={path} ({layout}) holds no images")
  return Source(layout=layout, classes=tuple(classes), splits=splits, rejected=rejected)


# ---------------------------------------------------------------------------------------------
# ILSVRC-2010


def _find_devkit_file(path: str, names: tuple) -> Optional[str]:
  """The first of `names` under `path`, searched breadth first to _DEVKIT_DEPTH levels."""
  level = [path]
  for _ in range(_DEVKIT_DEPTH + 1):
    for folder in level:
      for name in names:
        if os.path.isfile(os.path.join(folder, name)):
          return os.path.join(folder, name)
    level = [os.path.join(f, d) for f in level for d in sorted(os.listdir(f))
             if not d.startswith(".") and os.path.isdir(os.path.join(f, d))]
  return None


def read_meta(path: str) -> dict:
  """{ILSVRC2010_ID: (wnid, words)} of the 1000 challenge synsets from the devkit's meta.mat
  (entries with num_children 0, the "low level synsets"; the rest are their ancestors) or a text
  mapping of 'ILSVRC2010_ID wnid [words]' lines."""
  found = {}
  if path.endswith(".mat"):
    try:
      from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise InputError(f"reading {path} needs scipy (pip install 'keras_alexnet[ilsvrc2010]'), "
                       "or pass --meta_file=FILE with 'ILSVRC2010_ID wnid' lines") from None
    try:
      synsets = scipy_io.loadmat(path, squeeze_me=True, struct_as_record=False)["synsets"]
    except Exception as e:  # whatever scipy raises on a file that is not a .mat
      raise InputError(f"cannot read the devkit meta file {path}: {e}") from None
    for row in _mat_rows(synsets):
      if "ILSVRC2010_ID" not in row or "WNID" not in row:
        raise InputError(f"{path}: synsets have no ILSVRC2010_ID / WNID fields (fields: "
                         f"{sorted(row)}); is it another year's devkit?")
      if int(row.get("num_children", 0)) == 0:
        _add_synset(found, int(row["ILSVRC2010_ID"]), str(row["WNID"]),
                    str(row.get("words") or row["WNID"]), path)
  else:
    for number, line in enumerate(sources._read_lines(path, "devkit meta file"), 1):
      fields = line.split(None, 2)
      if len(fields) < 2 or not fields[0].isdigit() or not sources.WNID.fullmatch(fields[1]):
        raise InputError(f"{path}:{number}: expected 'ILSVRC2010_ID wnid [words]'; got "
                         f"{line!r}")
      _add_synset(found, int(fields[0]), fields[1],
                  fields[2].strip() if len(fields) > 2 else fields[1], path)
  if not found:
    raise InputError(f"the devkit meta file {path} lists no synsets")
  if sorted(found) != list(range(1, len(found) + 1)):
    raise InputError(f"{path}: the ILSVRC2010_IDs of the {len(found)} synsets are not "
                     f"1..{len(found)} (found {min(found)}..{max(found)})")
  return found


def _mat_rows(synsets) -> list:
  """The synsets of a loadmat(squeeze_me=True, struct_as_record=False) as dicts: the devkit's
  struct array, one struct, or one struct of arrays (what savemat makes of a dict of lists)."""
  items = list(synsets) if hasattr(synsets, "__len__") else [synsets]
  rows = [{f: getattr(item, f) for f in getattr(item, "_fieldnames", [])} for item in items]
  if len(rows) == 1 and not isinstance(rows[0].get("WNID", ""), str):
    columns = rows[0]
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
  return rows


def _add_synset(found, number, wnid, words, path):
  if number in found:
    raise InputError(f"{path}: ILSVRC2010_ID {number} is listed twice")
  if wnid in {w for w, _ in found.values()}:
    raise InputError(f"{path}: wnid {wnid} is listed twice")
  found[number] = (wnid, words)


def _ground_truth(names: list, truth_file: str, split: str, meta: dict,
                  index: dict) -> dict:
  """{image name: label} from a devkit ground-truth file: one ILSVRC2010_ID per line, line i
  labelling the i-th image in sorted file name order."""
  pattern = ILSVRC2010_IMAGE[split]
  odd = [n for n in names if not pattern.fullmatch(n)]
  if odd:
    raise InputError(f"{truth_file} is ILSVRC-2010 {split} ground truth, but the {split} tar "
                     f"holds {len(odd)} images not named like {pattern.pattern} (e.g. "
                     f"{odd[0]!r}): the devkit does not match the release")
  lines = sources._read_lines(truth_file, f"{split} ground truth")
  if len(lines) != len(names):
    raise InputError(f"{truth_file} has {len(lines):,} labels but the {split} tar holds "
                     f"{len(names):,} images; the devkit file must have one ILSVRC2010_ID per "
                     "image, in sorted file name order: it does not match the release")
  labels = {}
  for number, (name, line) in enumerate(zip(sorted(names), lines), 1):
    if line in index:   # a wnid per line (this builder's --validation_labels_file convention)
      labels[name] = index[line]
      continue
    if not line.isdigit() or int(line) not in meta:
      raise InputError(f"{truth_file}:{number}: {line!r} is not an ILSVRC2010_ID of the meta "
                       f"file (1..{len(meta)}): the devkit does not match the release")
    labels[name] = index[meta[int(line)][0]]
  return labels


def _patches(path: str) -> dict:
  """{split: {image name: (tar, offset, size)}} of patch_images.tar in `path` (or {})."""
  tar = os.path.join(path, ILSVRC2010_PATCH_TAR)
  found = {split: {} for split in _PATCH_FOLDER}
  if not os.path.isfile(tar):
    return found
  folders = {folder: split for split, folder in _PATCH_FOLDER.items()}
  for member in sources._list_tar(tar):
    parts = member.name.split("/")
    if len(parts) >= 2 and parts[-2] in folders:
      found[folders[parts[-2]]][parts[-1]] = (tar, member.offset_data, member.size)
  return found


def _patch(splits: dict, rejected: dict, split: str, patches: dict) -> None:
  """Points the split's patched images at their replacements; a replacement for no image of
  the release is listed among the split's skipped files."""
  mine = dict(patches.get(split, {}))
  items = splits[split]
  for i, item in enumerate(items):
    if item.filename in mine:
      tar, offset, size = mine.pop(item.filename)
      items[i] = Item(item.filename, item.label, tar, offset, size)
  rejected[split].extend((name, f"a replacement in {ILSVRC2010_PATCH_TAR} for no {split} image")
                         for name in sorted(mine))


def ilsvrc2010_source(path: str, meta_file: Optional[str] = None,
                      validation_labels_file: Optional[str] = None,
                      test_labels_file: Optional[str] = None, map_fn: Callable = map,
                      devkit_dir: Optional[str] = None) -> Source:
  """ILSVRC-2010 as downloaded (see the module docstring): train, validation and test. The
  devkit's files are looked for in devkit_dir (if given), then under path."""
  def find(names):
    return ((devkit_dir and _find_devkit_file(devkit_dir, names))
            or _find_devkit_file(path, names))
  meta_file = meta_file or find(META_FILES)
  if meta_file is None:
    raise InputError(f"--input={path} (ilsvrc2010) has no devkit meta file "
                     f"({' or '.join(META_FILES)} in it, in a subfolder such as "
                     "devkit-1.0/data/, or in --devkit_dir); pass --meta_file=meta.mat, or a "
                     "text file of 'ILSVRC2010_ID wnid' lines")
  meta = read_meta(meta_file)
  classes = tuple(sorted(meta.values()))
  index = {wnid: label for label, (wnid, _) in enumerate(classes)}
  truth = {"validation": validation_labels_file, "test": test_labels_file}
  splits, rejected = {}, {}
  patches = _patches(path)
  for split in ILSVRC2010_TARS:
    tar = _ilsvrc2010_tar(path, split)
    if tar is None:
      continue
    tar_name = os.path.basename(tar)
    if split == "train":
      inner, rejected["train"] = _synset_tars(tar, tar_name)
      unknown = sorted(w for _, _, w in inner if w not in index)
      if unknown:
        raise InputError(f"{tar} has class tars of {len(unknown)} synsets that {meta_file} "
                         f"does not list, e.g. {unknown[0]}: the devkit does not match the "
                         "release")
      splits["train"] = [Item(name, index[wnid], tar, offset, size)
                         for wnid, members in map_fn(sources.list_inner_tar, inner)
                         for name, offset, size in members]
      _patch(splits, rejected, "train", patches)
      continue
    truth_file = truth[split] or find((ILSVRC2010_GROUND_TRUTH[split],))
    if truth_file is None:
      flag = "validation_labels_file" if split == "validation" else "test_labels_file"
      raise InputError(f"{tar} needs its labels: {ILSVRC2010_GROUND_TRUTH[split]} (in --input "
                       f"or a subfolder) or --{flag}=FILE; nothing unlabelled is written")
    members = {os.path.basename(m.name): m for m in sources._list_tar(tar)}
    labels = _ground_truth(sorted(members), truth_file, split, meta, index)
    splits[split] = [Item(n, labels[n], tar, members[n].offset_data, members[n].size)
                     for n in sorted(members)]
    rejected[split] = []
    _patch(splits, rejected, split, patches)
  return _finish(path, "ilsvrc2010", classes, splits, rejected)
