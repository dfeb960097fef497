"""The validate stage on data in the real VOC / SBD formats: leakage between splits (by id and by
image content), exact expected counts, and quarantine (bad samples listed with their rule, left
out of the clean lists bootstrap and training read); a failure keeps earlier outputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import scratch_project
from deeplab_core.data.io import read_list_file
from deeplab_core.data.prepare import prepare_datasets
from realformat import write_sbd, write_voc

TRAIN = [f"2008_{i:06d}" for i in range(1, 9)]
VAL = [f"2009_{i:06d}" for i in range(1, 6)]
SBD_TRAIN = [f"2010_{i:06d}" for i in range(1, 5)] + TRAIN[:2]
SBD_VAL = [f"2011_{i:06d}" for i in range(1, 3)] + VAL[:1]   # a VOC val id: left out


@pytest.fixture(scope="module")
def validated(tmp_path_factory, prefect_api_url):
    """A scratch project whose data/ holds prepared real-format data and a passing validation."""
    base = tmp_path_factory.mktemp("validated")
    raw = base / "proj" / "data" / "raw"
    write_voc(raw, TRAIN, VAL)
    write_sbd(raw, SBD_TRAIN, SBD_VAL)
    root = scratch_project(base / "proj", {"validate": {"min_train_samples": 4,
                                                        "min_val_samples": 3}})
    prepare_datasets(raw / "VOCdevkit", raw / "benchmark_RELEASE", None,
                     root / "data" / "prepared", progress=False)
    proc = _run(root, "validate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def _run(root: Path, stage: str, params: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if params is not None:
        path = root.parent / f"params_{stage}.yaml"
        path.write_text(json.dumps(params))
        env["DEEPLAB_PARAMS"] = str(path)
    else:
        env.pop("DEEPLAB_PARAMS", None)
    return subprocess.run([sys.executable, "-m", f"pipelines.stages.{stage}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _params(root: Path, **validate) -> dict:
    import yaml

    p = yaml.safe_load((root / "params.yaml").read_text())
    p["validate"].update(validate)
    return p


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for d in ("validation", "validation_docs", "metrics")
            for p in sorted((root / "data" / d).rglob("*")) if p.is_file()}


@pytest.fixture
def project(validated, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(validated, root, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    return root


def _append_to_train_aug(root: Path, sid: str, image_rel: str, label_rel: str) -> None:
    with open(root / "data" / "prepared" / "train_aug.txt", "a") as fh:
        fh.write(f"{sid} {image_rel} {label_rel}\n")


def _val_entry(root: Path) -> tuple[str, str, str]:
    return (root / "data" / "prepared" / "val.txt").read_text().splitlines()[0].split()


def _fails(root: Path, params: dict | None, *parts: str) -> str:
    before = _snapshot(root)
    proc = _run(root, "validate", params)
    assert proc.returncode == 2, proc.stderr[-4000:]
    err = proc.stderr[proc.stderr.index("ERROR [validate]"):]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]  # the traceback: in the log only
    for part in parts:
        assert part in err, (part, err[:3000])
    assert _snapshot(root) == before
    return err


def test_val_id_appended_to_train_aug_fails(project):
    sid, img, lab = _val_entry(project)
    _append_to_train_aug(project, sid, img, lab)
    _fails(project, None, "leakage: expect_column_values_to_be_null(same_id_in)", sid)


def test_renamed_duplicate_of_a_val_image_fails(project):
    sid, img, lab = _val_entry(project)
    prepared = project / "data" / "prepared"
    shutil.copy(prepared / img, prepared / Path(img).with_name("2012_999999.jpg"))
    shutil.copy(prepared / lab, prepared / Path(lab).with_name("2012_999999.png"))
    _append_to_train_aug(project, "2012_999999", str(Path(img).with_name("2012_999999.jpg")),
                         str(Path(lab).with_name("2012_999999.png")))
    _fails(project, None, "leakage: expect_column_values_to_be_null(same_image_in)",
           "2012_999999", "'val'")


def test_expected_counts_are_exact(project):
    n_aug = len(read_list_file(project / "data" / "prepared" / "train_aug.txt"))
    params = _params(project, expected_counts={"train_aug": n_aug + 1, "val": len(VAL)})
    _fails(project, params, "train_aug: expect_table_row_count_to_equal", f"observed {n_aug}")


def test_quarantine_lists_bad_samples_and_training_lists_exclude_them(project, monkeypatch):
    sid, img, lab = _val_entry(project)
    _append_to_train_aug(project, sid, img, lab)                       # leak
    prepared = project / "data" / "prepared"
    aug = read_list_file(prepared / "train_aug.txt")
    corrupt_id, corrupt_img = aug[2][0], aug[2][1]
    corrupt_img.write_bytes(corrupt_img.read_bytes()[:200])            # truncated JPEG
    params = _params(project, on_error="quarantine",
                     expected_counts={"train_aug": len(aug), "val": len(VAL)})
    proc = _run(project, "validate", params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    val_dir = project / "data" / "validation"
    q = json.loads((val_dir / "quarantine.json").read_text())
    got = {(e["split"], e["id"], x["rule"]) for e in q["samples"] for x in e["rules"]}
    assert ("train_aug", sid, "expect_column_values_to_be_null(same_id_in)") in got
    assert ("train_aug", corrupt_id, "expect_column_values_to_be_in_set(image_readable)") in got
    assert [(e["split"], e["id"]) for e in q["samples"]] == [("train_aug", corrupt_id),
                                                              ("train_aug", sid)]
    assert q["count"] == 2
    clean = [i for i, _, _ in read_list_file(val_dir / "lists" / "train_aug.txt")]
    assert clean == [i for i, _, _ in aug if i not in (sid, corrupt_id)]
    assert [i for i, _, _ in read_list_file(val_dir / "lists" / "val.txt")] == VAL
    metrics = json.loads((project / "data" / "metrics" / "validate.json").read_text())
    assert metrics["quarantined"] == 2 and metrics["train_aug_clean"] == len(aug) - 2
    assert (project / "data" / "validation_docs" / "index.html").is_file()
    monkeypatch.chdir(project)  # the store keeps artifact paths relative to the project
    assert _mlflow_quarantine(project)["count"] == 2
    proc = _run(project, "bootstrap", _params(project))
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((project / "data" / "bootstrap" / "hard_images.json").read_text())
    assert doc["source"] == "validation/lists/train_aug.txt"
    assert not {sid, corrupt_id} & set(doc["ids"])


def test_labels_prepare_rejects_are_quarantined_with_its_rule(tmp_path, prefect_api_url):
    """The prepare and validate stages with `validate.on_error: quarantine` on real-format data
    holding a truncated VOC label and a corrupt SBD annotation: prepare does not stop, the exact
    counts still hold, quarantine.json names prepare's rule and file for both, and the clean
    lists leave them out."""
    raw = tmp_path / "src"
    write_voc(raw, TRAIN, VAL)
    write_sbd(raw, SBD_TRAIN, SBD_VAL)
    voc_label = raw / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VAL[1]}.png"
    voc_label.write_bytes(voc_label.read_bytes()[:60])
    sbd_id = SBD_TRAIN[0]  # an SBD-only train_aug id: its label comes from the .mat
    (raw / "benchmark_RELEASE" / "dataset" / "cls" / f"{sbd_id}.mat").write_bytes(b"garbage")
    n_aug = len(set(TRAIN) | set(SBD_TRAIN) | (set(SBD_VAL) - set(VAL)))
    root = scratch_project(tmp_path / "proj", {
        "prepare": {"source": "real", "voc_root": str(raw / "VOCdevkit"),
                    "sbd_root": str(raw / "benchmark_RELEASE"), "coco_root": None},
        "validate": {"on_error": "quarantine", "min_train_samples": 4, "min_val_samples": 3,
                     "expected_counts": {"train_aug": n_aug, "val": len(VAL)}}})
    for stage in ("prepare", "validate"):
        proc = _run(root, stage)
        assert proc.returncode == 0, proc.stderr[-4000:]
    q = json.loads((root / "data" / "validation" / "quarantine.json").read_text())
    entries = {(e["split"], e["id"]): e["rules"] for e in q["samples"]}
    assert set(entries) == {("val", VAL[1]), ("train_aug", sbd_id)}
    first = {k: rules[0] for k, rules in entries.items()}
    assert first[("val", VAL[1])]["stage"] == "prepare"
    assert first[("val", VAL[1])]["rule"] == "every image and label file must decode in full"
    assert first[("val", VAL[1])]["file"].endswith(f"SegmentationClass/{VAL[1]}.png")
    assert first[("train_aug", sbd_id)]["file"].endswith(f"cls/{sbd_id}.mat")
    # validate's own per-sample rules flag the passed-through source files as well
    assert all(len(rules) >= 2 for rules in entries.values())
    lists = root / "data" / "validation" / "lists"
    assert [i for i, _, _ in read_list_file(lists / "val.txt")] == [v for v in VAL if v != VAL[1]]
    aug = [i for i, _, _ in read_list_file(lists / "train_aug.txt")]
    assert len(aug) == n_aug - 1 and sbd_id not in aug
    metrics = json.loads((root / "data" / "metrics" / "prepare.json").read_text())
    assert metrics["rejected"] == 2
    # the same data with on_error back at `fail`: validate refuses prepare's rejects
    proc = _run(root, "validate", _params(root, on_error="fail"))
    assert proc.returncode == 2 and "prepare rejected" in proc.stderr, proc.stderr[-3000:]


def _mlflow_quarantine(root: Path) -> dict:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id], "tags.stage = 'validate'")]
    run_id = runs[0].info.run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"quarantine.json", "data_docs", "validation_report.json"} <= names
    assert "data_docs/index.html" in {a.path for a in client.list_artifacts(run_id, "data_docs")}
    return json.loads(Path(client.download_artifacts(run_id, "quarantine.json", str(root.parent)))
                      .read_text())


def test_class_frequencies_in_the_outputs(validated):
    freq = json.loads((validated / "data" / "validation" / "class_frequencies.json").read_text())
    val = freq["val"]
    assert val["samples"] == len(VAL) and val["pixels"] == len(VAL) * 48 * 64
    total = sum(c["pixels"] for c in val["classes"].values())
    ignore = pd.read_csv(validated / "data" / "validation" / "manifest_val.csv")
    assert abs(total + ignore["ignore_fraction"].mean() - 1.0) < 1e-4
    assert len(val["classes"]) == 21 and "frac_aeroplane" in ignore.columns


def _near_copy(root: Path, sid: str, new_id: str, kind: str) -> None:
    """A copy of sample ``sid``'s image, re-encoded at JPEG quality 90 or resized to 60% (its
    label resized with it), appended to train_aug as ``new_id``."""
    from PIL import Image

    prepared = root / "data" / "prepared"
    img_rel, lab_rel = next((i, lab) for s, i, lab in
                            (line.split() for line in (prepared / "val.txt").read_text()
                             .splitlines()) if s == sid)
    img, lab = Image.open(prepared / img_rel).convert("RGB"), Image.open(prepared / lab_rel)
    if kind == "resized":
        size = (int(img.width * 0.6), int(img.height * 0.6))
        img, lab = img.resize(size, Image.BILINEAR), lab.resize(size, Image.NEAREST)
    new_img = (prepared / img_rel).with_name(f"{new_id}.jpg")
    new_lab = (prepared / lab_rel).with_name(f"{new_id}.png")
    img.save(new_img, quality=90)
    lab.save(new_lab)
    _append_to_train_aug(root, new_id, str(Path(img_rel).with_name(new_img.name)),
                         str(Path(lab_rel).with_name(new_lab.name)))


def test_near_duplicate_of_a_val_image_fails_naming_both(project):
    sid = _val_entry(project)[0]
    _near_copy(project, sid, "2012_999998", "jpeg_q90")
    err = _fails(project, None, "leakage: expect_column_values_to_be_null(near_image_in)",
                 "'2012_999998'", f"val/{sid}", "2012_999998.jpg")
    assert "expected none" in err


def test_near_duplicates_are_quarantined_from_train_aug(project):
    sid = _val_entry(project)[0]
    _near_copy(project, sid, "2012_999998", "jpeg_q90")
    _near_copy(project, sid, "2012_999997", "resized")
    n_aug = len(read_list_file(project / "data" / "prepared" / "train_aug.txt"))
    proc = _run(project, "validate", _params(project, on_error="quarantine"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    q = json.loads((project / "data" / "validation" / "quarantine.json").read_text())
    got = {(e["split"], e["id"]): e["rules"] for e in q["samples"]}
    assert set(got) == {("train_aug", "2012_999998"), ("train_aug", "2012_999997")}
    for rules in got.values():
        assert rules[0]["rule"] == "expect_column_values_to_be_null(near_image_in)"
        assert rules[0]["value"].startswith(f"val/{sid} (")
    clean = [i for i, _, _ in read_list_file(project / "data" / "validation" / "lists" /
                                             "train_aug.txt")]
    assert len(clean) == n_aug - 2 and not {"2012_999998", "2012_999997"} & set(clean)


def test_greyscale_and_cmyk_images_pass_and_a_permuted_palette_fails_named(project):
    """What the reader accepts, validate accepts: greyscale and CMYK JPEGs are checked as the RGB
    images training reads. A label whose palette indices were permuted is refused, naming the
    file and the colours that moved."""
    from PIL import Image

    from deeplab_core.data.io import read_label_png
    from realformat import write_permuted_palette_png

    prepared = project / "data" / "prepared"
    aug = read_list_file(prepared / "train_aug.txt")
    for (sid, img, _), mode in zip(aug[:2], ("L", "CMYK")):
        Image.open(img).convert(mode).save(img, format="JPEG", quality=95)
    proc = _run(project, "validate")
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = pd.read_csv(project / "data" / "validation" / "manifest_train_aug.csv")
    rows = manifest.set_index("id").loc[[aug[0][0], aug[1][0]]]
    assert rows["image_mode"].tolist() == ["L", "CMYK"] and (rows["image_channels"] == 3).all()
    sid, _, lab = aug[3]
    label = read_label_png(lab).copy()
    cls = int(max(set(label.ravel().tolist()) - {0, 255}))
    write_permuted_palette_png(lab, label, cls, 1 if cls != 1 else 2)
    err = _fails(project, None, "train_aug: expect_column_values_to_be_in_set(label_palette_ok)",
                 f"'{sid}'", "palette colours moved", f"{sid}.png")
    assert "expected one of [True]" in err
