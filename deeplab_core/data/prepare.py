"""Prepare step: the DeepLab ``train_aug`` list (VOC 2012 + SBD), the VOC val list and the COCO
pretraining lists, with every label converted to a VOC palette PNG.

Output layout (``out_dir``)::

    labels/voc/<id>.png              VOC train + val labels (palette indices, 255 = void)
    labels/sbd/<id>.png              SBD GTcls.Segmentation of the train_aug ids VOC lacks
    labels/coco_train/<id>.png       COCO instances converted to VOC classes (id = 12 digits),
    labels/coco_val/<id>.png         rasterised once here by pycocotools (rules: data/coco.py)
    train_aug.txt  val.txt  coco_train.txt  coco_val.txt
    classes.json                     the class list (names, palette, ignore index)
    rejected.json                    samples whose label broke a rule (on_error="quarantine")
    summary.json

List files hold one sample per line, ``<id> <image_path> <label_path>``, separated by single
spaces. The paths are relative to the folder that holds the list file (``out_dir``) -- images
point back into the raw dataset trees (e.g. ``../raw/VOCdevkit/VOC2012/JPEGImages/<id>.jpg``),
labels into ``labels/`` -- so the lists do not depend on the working directory and stay valid
when the raw and prepared folders move together. A path that cannot be made relative (another
drive) is written absolute. :func:`deeplab_core.data.io.read_list_file` and
:class:`deeplab_core.data.dataset.SegmentationListDataset` resolve them this way by default.

train_aug = (VOC train | SBD train | SBD val) - VOC val, sorted; an id with a VOC annotation
uses it (and the VOC image), any other id uses the SBD annotation. With no SBD, train_aug is VOC
train. The inputs are checked before anything is written (:func:`read_sources`), and a label
that breaks a rule fails with a :class:`~deeplab_core.data.io.DataError` naming the file, the id
and the rule. With ``on_error="quarantine"`` such a sample is rejected instead of failing the
run: ``rejected.json`` lists it (split, id, file, problem, rule); a VOC or SBD sample stays in its
list with its label path pointing at the source file as it is (so the validate stage sees it,
quarantines it and the split counts still hold), a COCO image is left out of its list.
The whole ``out_dir`` is built in a temporary sibling folder and swapped in at the end: a
failed or killed run leaves the previous output (or none) and re-running replaces it. A caller
that builds the raw trees aside too passes ``build_dir`` and ``moved`` to
:func:`prepare_datasets` and swaps both in itself.
"""

from __future__ import annotations

import functools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from deeplab_core.classes import (COCO_TO_VOC, IGNORE_INDEX, NUM_VOC_CLASSES, VOC_CLASSES,
                                  voc_class_list, voc_palette)
from deeplab_core.data.coco import (COCO_MIN_AREA, coco_paths, coco_semantic_mask,
                                    images_with_voc_classes, load_coco_instances)
from deeplab_core.data.io import (DataError, PathLike, encode_label_png, format_list_line,
                                  list_path, read_label_png, relocated)
from deeplab_core.data.sbd import label_from_mat, read_sbd_split, resolve_sbd_root
from deeplab_core.data.voc import read_split, resolve_voc_root, split_file
from deeplab_core.fileio import atomic_directory, atomic_write_json, clean_stale_temporaries

LIST_FILES = ("train_aug.txt", "val.txt", "coco_train.txt", "coco_val.txt")
ON_ERROR = ("fail", "quarantine")
SBD_RULE = "an SBD annotation is a MATLAB file whose GTcls.Segmentation is an HxW class-index array"
_VALID = np.zeros(256, dtype=bool)
_VALID[:NUM_VOC_CLASSES] = True
_VALID[IGNORE_INDEX] = True
_VOC_PALETTE = voc_palette()


def trainaug_ids(voc_train: Iterable[str], voc_val: Iterable[str],
                 sbd_train: Iterable[str] = (), sbd_val: Iterable[str] = ()) -> list[str]:
    """(VOC train | SBD train | SBD val) - VOC val, sorted."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def check_label_values(label: np.ndarray, source: PathLike,
                       item_id: str | None = None) -> np.ndarray:
    bad = ~_VALID[np.unique(label)]
    if bad.any():
        vals = np.unique(label)[bad].tolist()
        raise DataError(source, f"label holds values {vals}",
                        "label values are VOC class indices 0..20 or 255 (void)", item_id)
    return label


# ----------------------------------------------------------------------------- workers
def _convert_label(read: Callable[..., np.ndarray], job: tuple[str, str, str]) -> np.ndarray:
    item_id, src, dst = job
    lab = check_label_values(read(src, item_id), src, item_id)
    Path(dst).write_bytes(encode_label_png(lab))
    return np.bincount(lab.ravel(), minlength=256)


def _read_voc_png(src: str, item_id: str) -> np.ndarray:
    """A VOC label's class indices; its palette must be VOC's (a permuted palette is refused)."""
    return read_label_png(src, item_id, _VOC_PALETTE, VOC_CLASSES)


def _convert_png(job: tuple[str, str, str]) -> np.ndarray:
    return _convert_label(_read_voc_png, job)


def _read_mat(src: str, item_id: str) -> np.ndarray:
    try:
        return label_from_mat(src)
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(src, str(exc), SBD_RULE, item_id) from None


def _convert_mat(job: tuple[str, str, str]) -> np.ndarray:
    return _convert_label(_read_mat, job)


def _convert_coco(job: tuple[list, int, int, dict, float, str, str, int]) -> np.ndarray:
    """Rasterise one COCO image's VOC mask; written only when it holds ``min_area`` VOC-class
    pixels (the counts are returned either way)."""
    anns, h, w, mapping, min_area, dst, json_path, image_id = job
    try:
        lab = coco_semantic_mask(anns, h, w, mapping)
    except ValueError as exc:
        raise DataError(json_path, str(exc), "every annotation of a kept image decodes with "
                        "pycocotools to a mask of the image's size", image_id,
                        id_kind="image id") from None
    cnt = np.bincount(lab.ravel(), minlength=256)
    if cnt[1:NUM_VOC_CLASSES].sum() >= min_area:
        Path(dst).write_bytes(encode_label_png(lab))
    return cnt


def _kept_going(fn: Callable, job) -> np.ndarray | DataError:
    """``fn(job)``, or the DataError it raised (returned, so that the other jobs go on)."""
    try:
        return fn(job)
    except DataError as exc:
        return exc


def _run(fn: Callable, jobs: list, workers: int, progress: bool, desc: str,
         keep_going: bool = False) -> list:
    """``fn`` over ``jobs`` (in worker processes when ``workers`` > 1), results in job order;
    with ``keep_going`` a job's DataError is its result instead of stopping the run."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    if keep_going:
        fn = functools.partial(_kept_going, fn)
    if workers > 1 and len(jobs) > workers:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            it = ex.map(fn, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers))))
            if tqdm:
                it = tqdm(it, total=len(jobs), desc=desc, disable=not progress)
            return list(it)
    it = jobs
    if tqdm:
        it = tqdm(jobs, desc=desc, disable=not progress)
    return [fn(j) for j in it]


def _stats(counts: list) -> dict:
    """Per-class image and pixel counts over the labels' value counts (rejected labels, given
    as their DataError, left out)."""
    counts = [c for c in counts if not isinstance(c, DataError)]
    if not counts:
        z = [0] * NUM_VOC_CLASSES
        return {"class_images": dict(zip(VOC_CLASSES, z)), "class_pixels": dict(zip(VOC_CLASSES, z)),
                "ignore_pixels": 0, "pixels": 0}
    arr = np.stack(counts)
    return {"class_images": dict(zip(VOC_CLASSES, (arr[:, :NUM_VOC_CLASSES] > 0).sum(0).tolist())),
            "class_pixels": dict(zip(VOC_CLASSES, arr[:, :NUM_VOC_CLASSES].sum(0).tolist())),
            "ignore_pixels": int(arr[:, IGNORE_INDEX].sum()), "pixels": int(arr.sum())}


# ----------------------------------------------------------------------------- main entry point
@dataclass(frozen=True)
class Sources:
    """The dataset trees behind a prepare run, resolved and checked (see :func:`read_sources`)."""

    voc: Path
    sbd: Path | None
    coco: Path | None
    voc_train: list[str]
    voc_val: list[str]
    sbd_train: list[str]
    sbd_val: list[str]
    coco_files: dict[str, tuple[Path, Path]]  # split -> (image folder, instances JSON)
    images: dict[str, Path]  # id -> image of every train_aug and val id

    @property
    def aug(self) -> list[str]:
        return trainaug_ids(self.voc_train, self.voc_val, self.sbd_train, self.sbd_val)

    @property
    def voc_label_ids(self) -> list[str]:
        return sorted(set(self.voc_train) | set(self.voc_val))

    @property
    def sbd_label_ids(self) -> list[str]:
        """train_aug ids labelled from SBD: those VOC train lacks."""
        voc_train = set(self.voc_train)
        return [i for i in self.aug if i not in voc_train]


def read_sources(voc_root: PathLike, sbd_root: PathLike | None,
                 coco_root: PathLike | None) -> Sources:
    """Resolve the dataset roots and check what can be checked without decoding, writing nothing.

    Checks the VOC 2012 layout and split files (each non-empty, no id twice, train and val
    disjoint), the SBD layout and split files when ``sbd_root`` is given, the COCO 2017 layout
    when ``coco_root`` is given, and that every label and image the lists need exists. Raises
    FileNotFoundError naming a missing path and :class:`~deeplab_core.data.io.DataError` naming
    the file, the id and the rule.
    """
    voc = resolve_voc_root(voc_root)
    voc_train, voc_val = read_split(voc, "train"), read_split(voc, "val")
    sbd = resolve_sbd_root(sbd_root) if sbd_root is not None else None
    sbd_train = read_sbd_split(sbd, "train") if sbd else []
    sbd_val = read_sbd_split(sbd, "val") if sbd else []
    coco = Path(coco_root) if coco_root is not None else None
    coco_files = {s: coco_paths(coco, s) for s in ("train", "val")} if coco else {}

    train_set = set(voc_train)
    shared = [i for i in voc_val if i in train_set]
    if shared:
        raise DataError(split_file(voc, "val"), f"id is also listed in "
                        f"{str(split_file(voc, 'train'))!r}",
                        "the VOC train and val splits share no id", shared[0])
    src = Sources(voc, sbd, coco, voc_train, voc_val, sbd_train, sbd_val, coco_files, {})

    def image_for(i: str) -> Path:
        p = voc / "JPEGImages" / f"{i}.jpg"
        if p.is_file():
            return p
        if sbd is not None and (sbd / "img" / f"{i}.jpg").is_file():
            return sbd / "img" / f"{i}.jpg"
        raise FileNotFoundError(f"no image for id {i!r}: looked for {str(p)!r}"
                                + (f" and {str(sbd / 'img' / (i + '.jpg'))!r}" if sbd else ""))

    for i in src.voc_label_ids:
        p = voc / "SegmentationClass" / f"{i}.png"
        if not p.is_file():
            raise FileNotFoundError(f"missing VOC label {str(p)!r} (expected VOC2012 layout: "
                                    f"SegmentationClass/{i}.png)")
    for i in src.sbd_label_ids:
        p = sbd / "cls" / f"{i}.mat"
        if not p.is_file():
            raise FileNotFoundError(f"missing SBD annotation {str(p)!r} (expected SBD layout: "
                                    f"dataset/cls/{i}.mat)")
    return replace(src, images={i: image_for(i) for i in sorted(set(src.aug) | set(voc_val))})


def prepare_datasets(voc_root: PathLike, sbd_root: PathLike | None, coco_root: PathLike | None,
                     out_dir: PathLike, progress: bool = True, workers: int = 1,
                     coco_to_voc: Mapping[int, int] = COCO_TO_VOC,
                     coco_min_area: float = COCO_MIN_AREA, build_dir: PathLike | None = None,
                     moved: Mapping[PathLike, PathLike] | None = None,
                     on_error: str = "fail") -> dict:
    """Build the prepared lists and labels under ``out_dir`` (see the module docstring).

    ``sbd_root`` / ``coco_root`` may be None to skip them (train_aug is then VOC train; the COCO
    lists are written empty). The inputs are checked by :func:`read_sources` before anything is
    written; a label that cannot be decoded or breaks a rule of its format raises
    :class:`~deeplab_core.data.io.DataError` (a ValueError) naming the file, the id and the rule,
    also from the worker processes; with ``on_error="quarantine"`` the sample is rejected
    instead (see the module docstring). Returns the summary also written to ``summary.json``.

    By default ``out_dir`` is built in a temporary sibling and swapped in at the end. With
    ``build_dir`` (an existing empty folder) the output is written there instead, for the caller
    to move to ``out_dir`` once its other outputs are ready too; ``moved`` maps folders that hold
    the dataset trees now to where the caller will move them. The paths in the lists are always
    relative to ``out_dir`` and point at the trees' final places.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    src = read_sources(voc_root, sbd_root, coco_root)
    out_dir = Path(out_dir).absolute()
    kw = dict(progress=progress, workers=workers, coco_to_voc=coco_to_voc,
              coco_min_area=coco_min_area, moved=moved or {}, on_error=on_error)
    if build_dir is not None:
        return _write_prepared(src, Path(build_dir), out_dir, **kw)
    clean_stale_temporaries(out_dir.parent, out_dir.name)
    with atomic_directory(out_dir) as tmp:
        summary = _write_prepared(src, tmp, out_dir, **kw)
    return summary


def _write_prepared(src: Sources, tmp: Path, out_dir: Path, progress: bool, workers: int,
                    coco_to_voc: Mapping[int, int], coco_min_area: float,
                    moved: Mapping[PathLike, PathLike], on_error: str) -> dict:
    """Write the prepared output into ``tmp`` with list paths relative to ``out_dir``."""

    def rel(path: PathLike) -> str:
        return list_path(relocated(path, moved), out_dir)

    keep_going = on_error == "quarantine"
    for sub in ("voc", "sbd", "coco_train", "coco_val"):
        (tmp / "labels" / sub).mkdir(parents=True, exist_ok=True)
    voc_count, sbd_count = _convert_voc_sbd_labels(src, tmp, workers, progress, keep_going)
    rejected = _write_voc_lists(src, tmp, rel, voc_count, sbd_count)
    coco_summary: dict = {}
    for split in ("train", "val"):
        lines: list[str] = []
        if src.coco:
            coco_summary[split], lines, coco_rejected = _prepare_coco_split(
                src, split, tmp, rel, workers, progress, coco_to_voc, coco_min_area, keep_going)
            rejected += coco_rejected
        else:
            coco_summary[split] = None
        (tmp / f"coco_{split}.txt").write_text("".join(x + "\n" for x in lines))
    summary = _summary(src, rel, coco_summary, voc_count, sbd_count)
    summary["rejected"] = len(rejected)
    atomic_write_json(tmp / "classes.json", voc_class_list().to_dict())
    atomic_write_json(tmp / "rejected.json", {"on_error": on_error, "samples": rejected})
    atomic_write_json(tmp / "summary.json", summary)
    return summary


def _rejection(split: str, item_id: str, err: DataError, rel: Callable[[PathLike], str]) -> dict:
    return {"split": split, "id": str(item_id), "file": rel(err.path), "problem": err.problem,
            "rule": err.rule}


Counts = dict[str, "np.ndarray | DataError"]


def _convert_voc_sbd_labels(src: Sources, tmp: Path, workers: int, progress: bool,
                            keep_going: bool = False) -> tuple[Counts, Counts]:
    """labels/voc and labels/sbd; returns the per-id value counts of each (with ``keep_going``,
    the DataError of a label that could not be converted)."""
    voc_counts = _run(_convert_png, [(i, str(src.voc / "SegmentationClass" / f"{i}.png"),
                                      str(tmp / "labels" / "voc" / f"{i}.png"))
                                     for i in src.voc_label_ids], workers, progress, "VOC labels",
                      keep_going)
    sbd_counts = _run(_convert_mat, [(i, str(src.sbd / "cls" / f"{i}.mat"),
                                      str(tmp / "labels" / "sbd" / f"{i}.png"))
                                     for i in src.sbd_label_ids], workers, progress, "SBD labels",
                      keep_going)
    return dict(zip(src.voc_label_ids, voc_counts)), dict(zip(src.sbd_label_ids, sbd_counts))


def _write_voc_lists(src: Sources, tmp: Path, rel: Callable[[PathLike], str],
                     voc_count: Counts, sbd_count: Counts) -> list[dict]:
    """train_aug.txt (the VOC label where VOC train has one, else SBD's) and val.txt. A sample
    whose label was rejected keeps its line, pointing at the source label file; returns those
    rejections."""
    voc_train_set = set(src.voc_train)
    rejected: list[dict] = []

    def entry(split: str, i: str, sub: str) -> str:
        got = (voc_count if sub == "voc" else sbd_count)[i]
        label = f"labels/{sub}/{i}.png"
        if isinstance(got, DataError):
            rejected.append(_rejection(split, i, got, rel))
            label = rel(got.path)
        return format_list_line(i, rel(src.images[i]), label)

    aug_lines = [entry("train_aug", i, "voc" if i in voc_train_set else "sbd") for i in src.aug]
    val_lines = [entry("val", i, "voc") for i in src.voc_val]
    (tmp / "train_aug.txt").write_text("".join(x + "\n" for x in aug_lines))
    (tmp / "val.txt").write_text("".join(x + "\n" for x in val_lines))
    return rejected


def _prepare_coco_split(src: Sources, split: str, tmp: Path, rel: Callable[[PathLike], str],
                        workers: int, progress: bool, coco_to_voc: Mapping[int, int],
                        coco_min_area: float, keep_going: bool = False
                        ) -> tuple[dict, list[str], list[dict]]:
    """labels/coco_<split>: the images with at least ``coco_min_area`` VOC-class pixels; returns
    the split's summary, its list lines and (with ``keep_going``) the images left out because
    an annotation broke a rule."""
    img_dir, json_path = src.coco_files[split]
    inst = load_coco_instances(json_path)
    keep = images_with_voc_classes(inst, coco_to_voc)
    names = {k: Path(inst.images[k]["file_name"]).stem for k in keep}
    mapping = {int(k): int(v) for k, v in coco_to_voc.items()}
    jobs = [(inst.anns(k), int(inst.images[k]["height"]), int(inst.images[k]["width"]),
             mapping, float(coco_min_area),
             str(tmp / "labels" / f"coco_{split}" / f"{names[k]}.png"), str(json_path), k)
            for k in keep]
    counts = _run(_convert_coco, jobs, workers, progress, f"COCO {split}", keep_going)
    lines, written, rejected = [], [], []
    for k, cnt in zip(keep, counts):
        if isinstance(cnt, DataError):
            rejected.append(_rejection(f"coco_{split}", names[k], cnt, rel))
            continue
        if cnt[1:NUM_VOC_CLASSES].sum() < coco_min_area:
            continue
        img = img_dir / inst.images[k]["file_name"]
        if not img.is_file():
            raise FileNotFoundError(f"missing COCO image {str(img)!r} (listed in "
                                    f"{str(json_path)!r})")
        lines.append(format_list_line(names[k], rel(img), f"labels/coco_{split}/{names[k]}.png"))
        written.append(cnt)
    summary = {"images": len(inst.images), "with_voc_classes": len(keep),
               "written": len(lines), "min_area": coco_min_area,
               "dropped_under_min_area": len(keep) - len(lines) - len(rejected),
               "rejected": len(rejected), **_stats(written)}
    return summary, lines, rejected


def _summary(src: Sources, rel: Callable[[PathLike], str], coco_summary: dict,
             voc_count: dict[str, np.ndarray], sbd_count: dict[str, np.ndarray]) -> dict:
    voc, sbd, coco, aug = src.voc, src.sbd, src.coco, src.aug
    voc_train_set, voc_val_set = set(src.voc_train), set(src.voc_val)
    sbd_all = set(src.sbd_train) | set(src.sbd_val)
    removed = sorted(sbd_all & voc_val_set)
    return {
        "paths_relative_to": "the folder holding the list file",
        "list_format": "<id> <image_path> <label_path>",
        "voc": {"root": rel(voc), "train": len(src.voc_train), "val": len(src.voc_val)},
        "sbd": ({"root": rel(sbd), "train": len(src.sbd_train),
                 "val": len(src.sbd_val), "total": len(sbd_all)} if sbd else None),
        "coco": ({"root": rel(coco), **coco_summary} if coco else None),
        "train_aug": {
            "total": len(aug),
            "from_voc": sum(1 for i in aug if i in voc_train_set),
            "from_sbd": sum(1 for i in aug if i not in voc_train_set),
            "sbd_only": len(sbd_all - voc_train_set - voc_val_set),
            "overlap_removed": len(removed),
            "overlap_removed_ids": removed,
            "voc_train_also_in_sbd": len(voc_train_set & sbd_all),
            **_stats([voc_count[i] if i in voc_train_set else sbd_count[i] for i in aug]),
        },
        "val": {"total": len(src.voc_val), **_stats([voc_count[i] for i in src.voc_val])},
    }
