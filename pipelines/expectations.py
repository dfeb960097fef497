"""The Great Expectations suite the validate stage runs over each split's per-sample manifest."""

from __future__ import annotations

import logging

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from deeplab_core.config import ValidateConfig


def build_suite(gx, cfg: ValidateConfig, min_rows: int, name: str):
    suite = gx.ExpectationSuite(name=name)
    for e in (
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
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
        gxe.ExpectColumnValuesToBeBetween(column="ignore_fraction", min_value=0.0,
                                          max_value=cfg.max_ignore_fraction),
    ):
        suite.add_expectation(e)
    return suite


def run_suite(df: pd.DataFrame, cfg: ValidateConfig, min_rows: int, split: str) -> dict:
    """Validate one split's manifest; returns {'success', 'failures': [...], 'n_rows'}."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    asset = ctx.data_sources.add_pandas(f"manifest_{split}").add_dataframe_asset(split)
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(build_suite(gx, cfg, min_rows, f"deeplab_{split}"))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"v_{split}", data=batch,
                                                                suite=suite))
    res = vd.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")
    failures = []
    for r in res.results:
        if r.success:
            continue
        cfg_ = r.expectation_config
        col = cfg_.kwargs.get("column")
        bad_idx = r.result.get("unexpected_index_list") or []
        # GX reports index labels, not positions
        ids = [str(df.loc[i, "id"]) if i in df.index else str(i) for i in bad_idx[:10]]
        failures.append({"expectation": cfg_.type, "column": col,
                         "kwargs": {k: v for k, v in cfg_.kwargs.items() if k != "batch_id"},
                         "unexpected_count": r.result.get("unexpected_count"),
                         "observed": r.result.get("observed_value"),
                         "example_ids": ids,
                         "example_values": (r.result.get("partial_unexpected_list") or [])[:10]})
    return {"split": split, "success": bool(res.success), "n_rows": int(len(df)),
            "failures": failures}
