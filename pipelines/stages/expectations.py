"""The Great Expectations suites the validate stage runs: one per split over its per-sample
manifest (readable files, sizes, label values, void fraction, sample count), and one across the
splits (leakage: no id and no image content in two splits). All run in one checkpoint that also
renders GX's data docs (HTML)."""

from __future__ import annotations

import datetime
import functools
import logging
import re
from pathlib import Path
from typing import Callable

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier

from deeplab_core.config import ValidateConfig

# Evaluation splits first: a sample found in two splits stays in the earlier one and is a leak
# in the later (a val image in train_aug is removed from train_aug, never from val).
SPLIT_PRECEDENCE = ("val", "train_aug", "coco_val", "coco_train")
LEAKAGE = "leakage"
# One fixed run identity, so that the data docs' paths do not change from run to run.
RUN_ID = RunIdentifier(run_name="validate",
                       run_time=datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
MANIFEST_COLUMNS = ["id", "image_readable", "label_readable", "image_channels", "width",
                    "height", "size_match", "label_values_valid", "label_palette_ok",
                    "ignore_fraction"]


def split_suite(cfg: ValidateConfig, min_rows: int, expected: int | None, name: str):
    suite = gx.ExpectationSuite(name=name)
    count = (gxe.ExpectTableRowCountToEqual(value=expected) if expected is not None
             else gxe.ExpectTableRowCountToBeBetween(min_value=min_rows))
    for e in (
        count,
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="image_readable", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="label_readable", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="image_channels", value_set=[3]),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_side,
                                          max_value=cfg.max_side),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_side,
                                          max_value=cfg.max_side),
        gxe.ExpectColumnValuesToBeInSet(column="size_match", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="label_values_valid", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="label_palette_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="ignore_fraction", min_value=0.0,
                                          max_value=cfg.max_ignore_fraction),
    ):
        suite.add_expectation(e)
    return suite


def leakage_suite(name: str = "deeplab_leakage"):
    """Splits pairwise disjoint: ``same_id_in`` / ``same_image_in`` name the earlier split
    (:data:`SPLIT_PRECEDENCE`) holding the row's id / image bytes, ``near_image_in`` the earlier
    sample whose image is a near-duplicate of the row's (perceptual hashes within
    :data:`~deeplab_core.data.manifest.NEAR_DUPLICATE_BITS` bits: a re-encoded, resized or
    lightly cropped copy); all must be empty."""
    suite = gx.ExpectationSuite(name=name)
    for column in LEAKAGE_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValuesToBeNull(column=column))
    return suite


LEAKAGE_COLUMNS = ("same_id_in", "same_image_in", "near_image_in")


def manifest_frame(records: list[dict]) -> pd.DataFrame:
    """The records as a frame; a column the suite checks that the records lack is added empty
    (None: a rule over it has nothing to judge, e.g. ``label_palette_ok`` without a palette)."""
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    for column in MANIFEST_COLUMNS:
        if column not in df:
            df[column] = None
    return df


def leakage_frame(manifests: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per sample of every split: ``split, id, image_md5, same_id_in, same_image_in,
    near_image_in`` (``"<split>/<id> (<n> bits)"``: the nearest earlier-split image within the
    near-duplicate threshold, for a row whose bytes match no earlier image)."""
    from deeplab_core.data.manifest import near_duplicates

    rows, first_id, first_md5 = [], {}, {}
    earlier: list[tuple[str, str, str | None]] = []  # (split, id, phash) of the earlier splits
    order = [s for s in SPLIT_PRECEDENCE if s in manifests] + \
        [s for s in manifests if s not in SPLIT_PRECEDENCE]
    for split in order:
        recs = manifests[split]
        near = near_duplicates([r.get("image_phash") for r in recs], [e[2] for e in earlier])
        for r, hit in zip(recs, near):
            md5 = r.get("image_md5")
            prev_id = first_id.setdefault(r["id"], split)
            prev_md5 = first_md5.setdefault(md5, split) if md5 else split
            same_image = prev_md5 if prev_md5 != split else None
            rows.append({"split": split, "id": r["id"], "image_path": r.get("image_path"),
                         "image_md5": md5,
                         "same_id_in": prev_id if prev_id != split else None,
                         "same_image_in": same_image,
                         "near_image_in": (f"{earlier[hit[0]][0]}/{earlier[hit[0]][1]} "
                                           f"({hit[1]} bits)")
                         if hit is not None and same_image is None else None})
        earlier += [(split, r["id"], r.get("image_phash")) for r in recs]
    cols = ["split", "id", "image_path", "image_md5", *LEAKAGE_COLUMNS]
    return pd.DataFrame(rows, columns=cols).astype(object)


def _plain(v):
    """A JSON-ready scalar (numpy / pandas values and NaN made plain)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    return v.item() if hasattr(v, "item") else v


def _file_column(column: str | None) -> str:
    """The manifest column naming the file a rule about ``column`` judges."""
    label_rule = column is not None and (column.startswith("label_") or column in
                                         ("size_match", "ignore_fraction"))
    return "label_path" if label_rule else "image_path"


def expected_text(expectation: str, kwargs: dict) -> str:
    """What an expectation wanted, in words (``expected 1449``, ``expected one of [True]``)."""
    if "value" in kwargs:
        return f"expected {kwargs['value']}"
    if "value_set" in kwargs:
        return f"expected one of {list(kwargs['value_set'])}"
    if "min_value" in kwargs or "max_value" in kwargs:
        return (f"expected between {kwargs.get('min_value')} and {kwargs.get('max_value')}"
                if kwargs.get("max_value") is not None
                else f"expected at least {kwargs.get('min_value')}")
    if expectation.endswith("to_be_null"):
        return "expected none"
    if expectation.endswith("to_be_unique"):
        return "expected each value once"
    return "expected the rule to hold"


def _failures(res, df: pd.DataFrame) -> list[dict]:
    out = []
    for r in res.results:
        if r.success:
            continue
        conf = r.expectation_config
        col = conf.kwargs.get("column")
        idx = [i for i in (r.result.get("unexpected_index_list") or []) if i in df.index]
        rows = df.loc[idx]
        out.append({"expectation": conf.type, "column": col,
                    "rule": f"{conf.type}({col})" if col else conf.type,
                    "kwargs": {k: v for k, v in conf.kwargs.items() if k != "batch_id"},
                    "unexpected_count": r.result.get("unexpected_count"),
                    "observed": r.result.get("observed_value"),
                    "row_level": col is not None,
                    "unexpected": [{"split": rows.at[i, "split"] if "split" in rows else None,
                                    "id": str(rows.at[i, "id"]),
                                    "value": _plain(rows.at[i, col]) if col else None,
                                    "file": _plain(rows.at[i, _file_column(col)])
                                    if _file_column(col) in rows else None,
                                    "error": _plain(rows.at[i, "error"])
                                    if "error" in rows else None}
                                   for i in rows.index],
                    "example_ids": [str(i) for i in rows["id"][:10]],
                    "example_values": (r.result.get("partial_unexpected_list") or [])[:10]})
    return out


def run_suites(frames: dict[str, tuple[pd.DataFrame, Callable[[], object]]],
               docs_dir: Path | None = None) -> dict[str, dict]:
    """Validate each ``name -> (frame, suite builder)`` (the builder is called once GX's context
    exists); with ``docs_dir``, GX's data docs (HTML) are written there. Returns ``name -> {'success', 'failures', 'n_rows'}``."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    if docs_dir is not None:
        ctx.add_data_docs_site(site_name="validation", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name":
                                                                "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)}})
    source = ctx.data_sources.add_pandas("manifests")
    out = {}
    for name, (df, make_suite) in frames.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(
            name=f"v_{name}", data=batch, suite=ctx.suites.add(make_suite())))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs")] if docs_dir else []
        cp = ctx.checkpoints.add(gx.Checkpoint(name=f"cp_{name}", validation_definitions=[vd],
                                               actions=actions, result_format="COMPLETE"))
        res = next(iter(cp.run(batch_parameters={"dataframe": df},
                               run_id=RUN_ID).run_results.values()))
        out[name] = {"split": name, "success": bool(res.success), "n_rows": int(len(df)),
                     "failures": _failures(res, df)}
    if docs_dir is not None:
        stable_docs(docs_dir)
    return out


_STAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stable_docs(docs_dir: Path) -> None:
    """Make the data docs byte-identical for the same data: GX stamps each page with the time it
    was rendered and gives its collapsible blocks random uuids; the stamps become the fixed run
    time (the real one is in the MLflow run) and the uuids a count in order of appearance."""
    fixed = RUN_ID.run_time.strftime("%Y%m%dT%H%M%S.%fZ")
    for page in sorted(Path(docs_dir).rglob("*.html")):
        text = _STAMP.sub(fixed, page.read_text(encoding="utf-8"))
        seen: dict[str, str] = {}
        text = _UUID.sub(lambda m: seen.setdefault(m.group(0), f"block-{len(seen)}"), text)
        page.write_text(text, encoding="utf-8")


def run_suite(df: pd.DataFrame, cfg: ValidateConfig, min_rows: int, split: str,
              expected: int | None = None) -> dict:
    """Validate one split's manifest alone (no data docs)."""
    suite = functools.partial(split_suite, cfg, min_rows, expected, f"deeplab_{split}")
    return run_suites({split: (manifest_frame(df.to_dict("records")), suite)})[split]
