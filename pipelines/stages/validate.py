"""validate stage: a per-sample manifest of every prepared list (readable image and label, sizes,
label values against the dataset's class list, void fraction, class fractions, image content
hash), checked by Great Expectations: one suite per split (with the exact expected sample counts
of `validate.expected_counts`) and one across splits (no id and no image content in two splits).

`validate.on_error: fail` (default): any failed expectation fails the DAG here, naming the split,
the rule and example ids; nothing is written. `quarantine`: samples that break a per-sample rule
(or leak into a later split) are listed with their rule in data/validation/quarantine.json (and
in MLflow) and left out of the clean lists data/validation/lists/<split>.txt that training and
bootstrapping read; a failed count still fails the stage. The samples whose label prepare could
not convert (data/prepared/rejected.json: a label that breaks its format's rule) are quarantined
too, with prepare's rule; in `fail` mode prepare has already failed on them.

Outs: data/validation/{manifest_<split>.csv, report.json, quarantine.json,
class_frequencies.json, lists/<split>.txt}, data/validation_docs (GX data docs, HTML, also
logged to MLflow); metrics data/metrics/validate.json."""

from __future__ import annotations

import functools
from pathlib import Path

from prefect import flow, task

from deeplab_core.config import SPLIT_NAMES
from pipelines import tracking
from pipelines.common import StageError, get_params, run_stage
from pipelines.stages.expectations import (LEAKAGE, expected_text, leakage_frame, leakage_suite,
                                           manifest_frame, run_suites, split_suite)
from pipelines.stages.shared import atomic_dir, dataset_classes, write_json
from pipelines.paths import StagePaths

SPLITS = SPLIT_NAMES


@task
@tracking.work("data")
def manifest(list_file, classes) -> list[dict]:
    from deeplab_core.data.manifest import build_manifest

    if not Path(list_file).read_text().strip():
        return []
    return build_manifest(list_file, class_names=classes.names, ignore_index=classes.ignore_index,
                          palette=classes.full_palette())


@task
@tracking.work("data")
def check(manifests: dict[str, list[dict]], cfg, docs_dir: Path) -> dict:
    mins = {"train_aug": cfg.min_train_samples, "val": cfg.min_val_samples}
    frames = {s: (manifest_frame(recs), functools.partial(
        split_suite, cfg, mins.get(s, 0), cfg.expected_counts.get(s), f"deeplab_{s}"))
        for s, recs in manifests.items()}
    frames[LEAKAGE] = (leakage_frame(manifests), leakage_suite)
    return run_suites(frames, docs_dir)


def failure_lines(results: dict, row_level: bool | None = None,
                  base: Path | None = None, examples: int = 3) -> list[str]:
    """One line per failed rule: the split, the rule, what it expected and what it found, and
    for a per-sample rule the first ``examples`` samples by id and file (relative to ``base``,
    the folder the lists' paths are relative to) with the reader's error where there is one."""
    import os

    lines = []
    for split, r in results.items():
        for f in r["failures"]:
            if row_level is not None and f["row_level"] != row_level:
                continue
            want = expected_text(f["expectation"], f["kwargs"])
            if not f["row_level"]:
                lines.append(f"  {split}: {f['rule']}: {want}, observed {f['observed']}")
                continue
            shown = []
            for u in f["unexpected"][:examples]:
                where = (f" in {os.path.normpath(base / u['file']) if base else u['file']!r}"
                         if u.get("file") else "")
                what = u.get("error") or f"value {u['value']!r}"
                shown.append(f"{u['split'] + ' ' if u.get('split') else ''}id {u['id']!r}"
                             f"{where}: {what}")
            more = len(f["unexpected"]) - len(shown)
            lines.append(f"  {split}: {f['rule']} failed for {f['unexpected_count']} sample(s) "
                         f"({want}): " + "; ".join(shown) + (f"; and {more} more" if more > 0
                                                              else ""))
    return lines


def quarantine_entries(results: dict) -> list[dict]:
    """``{split, id, rules: [{rule, value}, ...]}`` for every sample a per-sample rule flags,
    in the order found."""
    out: dict[tuple[str, str], dict] = {}
    for split, r in results.items():
        for f in r["failures"]:
            for u in f["unexpected"] if f["row_level"] else ():
                key = (u["split"] or split, u["id"])
                entry = out.setdefault(key, {"split": key[0], "id": key[1], "rules": []})
                entry["rules"].append({"rule": f["rule"], "value": u["value"]})
    return list(out.values())


def read_rejected(paths: StagePaths) -> list[dict]:
    """The samples prepare rejected (none when it ran in `fail` mode, or for a generic source)."""
    import json

    if not paths.rejected.is_file():
        return []
    return json.loads(paths.rejected.read_text())["samples"]


def add_rejected(quarantined: list[dict], rejected: list[dict]) -> list[dict]:
    """The quarantine entries with prepare's rejections merged in: a rejected sample's entry
    gains ``{rule, value: problem, stage: "prepare"}`` (a new entry when validate's own rules
    did not flag it, e.g. a COCO image prepare left out of its list)."""
    out = {(q["split"], q["id"]): {**q, "rules": list(q["rules"])} for q in quarantined}
    for r in rejected:
        entry = out.setdefault((r["split"], r["id"]),
                               {"split": r["split"], "id": r["id"], "rules": []})
        entry["rules"].insert(0, {"rule": r["rule"], "value": r["problem"], "stage": "prepare",
                                  "file": r["file"]})
    return list(out.values())


def write_clean_lists(paths: StagePaths, out: Path,
                      drop: set[tuple[str, str]]) -> dict[str, int]:
    """data/validation/lists/<split>.txt: the prepared lists less the dropped (split, id)
    samples, paths rewritten relative to the new folder. Returns split -> samples kept."""
    from deeplab_core.data.io import format_list_line, list_path, read_list_file

    kept = {}
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lf = paths.prepared_list(split)
        rows = [(i, img, lab) for i, img, lab in read_list_file(lf) if (split, i) not in drop]
        lines = [format_list_line(i, list_path(img, out), list_path(lab, out))
                 for i, img, lab in rows]
        (out / f"{split}.txt").write_text("".join(x + "\n" for x in lines))
        kept[split] = len(rows)
    return kept


def _outcome(results: dict, cfg, base: Path | None = None) -> list[dict]:
    """Raise StageError when the stage must fail; else the samples to quarantine."""
    if cfg.on_error == "fail" or any(not f["row_level"] for r in results.values()
                                     for f in r["failures"]):
        if not all(r["success"] for r in results.values()):
            raise StageError("\n".join(["data validation failed (Great Expectations; "
                                        "data docs logged to MLflow):"]
                                       + failure_lines(results, base=base)))
    return quarantine_entries(results)


def write_outputs(out: Path, manifests: dict[str, list[dict]], report: dict,
                  quarantined: list[dict], class_names) -> None:
    """The per-split manifests, the report, the quarantine list and the class frequencies in
    data/validation (being built at `out`); the quarantine list also to MLflow."""
    import mlflow

    from deeplab_core.data.manifest import class_frequencies, write_manifest_csv

    for split, recs in manifests.items():
        write_manifest_csv(recs, out / f"manifest_{split}.csv")
    write_json(out / "report.json", report)
    write_json(out / "quarantine.json", {"count": len(quarantined), "samples": quarantined})
    write_json(out / "class_frequencies.json",
               {s: class_frequencies(r, class_names) for s, r in manifests.items()})
    mlflow.log_dict({"count": len(quarantined), "samples": quarantined}, "quarantine.json")


def summary_metrics(manifests: dict, kept: dict[str, int], quarantined: list[dict],
                    results: dict) -> dict:
    return {**{f"{s}_samples": len(m) for s, m in manifests.items()},
            **{f"{s}_clean": n for s, n in kept.items()},
            "quarantined": len(quarantined),
            "expectations_failed": sum(len(r["failures"]) for r in results.values())}


@flow(name="validate")
def validate_flow() -> dict:
    params = get_params()
    cfg = params.validate_
    p = StagePaths.of(params)
    for lf in [p.prepared_list(s) for s in SPLITS]:
        if not lf.is_file():
            raise StageError(f"{lf} not found: run the prepare stage")
    classes = dataset_classes(params)
    with tracking.stage_run("validate", {"validate": cfg.model_dump()}):
        manifests = {s: manifest(p.prepared_list(s), classes) for s in SPLITS}
        with atomic_dir(p.validation) as tmp, atomic_dir(p.validation_docs) as docs:
            results = check(manifests, cfg, docs)
            report = {"success": all(r["success"] for r in results.values()),
                      "on_error": cfg.on_error, "splits": _brief(results)}
            import mlflow
            mlflow.log_dict(report, "validation_report.json")
            tracking.log_artifacts([docs], "data_docs")
            rejected = read_rejected(p)
            if rejected and cfg.on_error == "fail":
                raise StageError(f"{p.rejected} lists {len(rejected)} sample(s) prepare "
                                 f"rejected (e.g. {rejected[0]['split']} id "
                                 f"{rejected[0]['id']!r}: {rejected[0]['problem']}), but "
                                 f"validate.on_error is 'fail': re-run prepare")
            quarantined = add_rejected(_outcome(results, cfg, p.prepared), rejected)
            kept = write_clean_lists(p, tmp / "lists",
                                     {(q["split"], q["id"]) for q in quarantined})
            _require_minimums(kept, cfg)
            write_outputs(tmp, manifests, report, quarantined, classes.names)
        metrics = summary_metrics(manifests, kept, quarantined, results)
        tracking.publish_metrics(p.metrics_file("validate"), metrics)
    if quarantined:
        print("validate: quarantined samples:\n"
              + "\n".join(failure_lines(results, True, base=p.prepared)))
    print(f"validate: {metrics}")
    return report


def _brief(results: dict) -> dict:
    """The results without the full per-sample lists (those go to quarantine.json)."""
    return {s: {**r, "failures": [{k: v for k, v in f.items() if k != "unexpected"}
                                  for f in r["failures"]]} for s, r in results.items()}


def _require_minimums(kept: dict[str, int], cfg) -> None:
    mins = {"train_aug": cfg.min_train_samples, "val": cfg.min_val_samples}
    short = {s: (kept[s], m) for s, m in mins.items() if kept[s] < m}
    if short:
        raise StageError("too few samples left after quarantine: " + ", ".join(
            f"{s} {n} < {m}" for s, (n, m) in short.items()))


if __name__ == "__main__":
    run_stage(validate_flow)
