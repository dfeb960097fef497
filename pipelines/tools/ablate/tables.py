"""The comparison table of an ablation: table.md (with a header saying what was compared on
what) and table.csv, metrics as fractions; only what the same inputs reproduce (timings and run
ids stay in MLflow). ``shared`` arguments are the runner's ``Shared`` (the eval images, the
model's spec)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from deeplab_core.fileio import atomic_write_text
from pipelines import tracking
from pipelines.common import data_dir, file_md5
from pipelines.tools.ablate.spec import Grid, shown

def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "none" if not v else "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


LABELS = {"eval.output_stride": "eval OS", "eval.scales": "scales", "eval.flip": "flip",
          "eval.crf": "CRF", "model.output_stride": "train OS"}
_NOT_COLUMNS = ("finetune.log_every", "finetune.checkpoint_every", "eval.set", "model.file")


def setting_columns(rows: list[dict], keys: list[str] | None = None) -> list[tuple[str, str]]:
    """(settings key, column label) of `keys`, or else of each setting whose value differs
    between the rows."""
    flat = [tracking.flatten({k: v for k, v in r["settings"].items() if k != "crf"})
            for r in rows]
    if keys is None:
        keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in _NOT_COLUMNS
                and len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
    out = []
    for k in keys:
        label = LABELS.get(k) or (k.split(".", 1)[1] if k.startswith("model.") else k)
        out.append((k, label))
    return out


def table_rows(grid: Grid, rows: list[dict]) -> tuple[list[str], list[dict], list[str]]:
    """Columns and rows of the CSV (metrics as MLflow logs them, fractions) and the Markdown
    header cells. Only what the same inputs reproduce: timings and run ids stay in MLflow."""
    cols = setting_columns(rows, grid.columns)
    refs = [None] + [c.compare_to or grid.configs[i - 1 if grid.cumulative else 0].name
                     for i, c in enumerate(grid.configs) if i]
    delta_label = "Δ vs previous" if grid.cumulative else "Δ vs first"
    if any(c.compare_to for c in grid.configs):
        delta_label += ", or vs the row named"
    any_crf = any("miou_crf" in r["metrics"] for r in rows)
    csv_cols = ["config"] + [label for _, label in cols] + ["miou", "miou_delta", "delta_vs",
                                                            "pixel_acc"]
    md_cols = ["config"] + [label for _, label in cols] + ["mIoU (%)", f"{delta_label} (points)",
                                                           "pixel acc (%)"]
    if any_crf:
        csv_cols += ["miou_no_crf", "miou_crf"]
        md_cols += ["mIoU before CRF (%)"]
    if grid.kind == "inference":
        csv_cols += ["passes_per_image"]
        md_cols += ["passes / image"]
    else:
        csv_cols += ["params_m", "final_loss"]
        md_cols += ["params (M)", "final loss"]
    if any(c.paper for c in grid.configs):
        csv_cols += ["paper"]
        md_cols += ["paper's mIoU (%)"]
    papers = {c.name: c.paper for c in grid.configs}
    miou = {r["config"]: r["metrics"]["miou"] for r in rows}
    out = []
    for i, r in enumerate(rows):
        flat = tracking.flatten(r["settings"])
        m, ev = r["metrics"], r["settings"]["eval"]
        ref = miou[refs[i]] if refs[i] else None
        row = {"config": r["config"], **{label: _fmt(flat.get(k)) for k, label in cols},
               "miou": m["miou"], "miou_delta": None if ref is None else m["miou"] - ref,
               "delta_vs": refs[i] or "",
               "pixel_acc": m["pixel_acc"], "miou_no_crf": m["miou_no_crf"],
               "miou_crf": m.get("miou_crf"),
               "passes_per_image": len(ev["scales"]) * (2 if ev["flip"] else 1),
               "params_m": m.get("params_m"), "final_loss": m.get("final_loss"),
               "paper": papers.get(r["config"], "")}
        out.append({c: row[c] for c in csv_cols})
    return csv_cols, out, md_cols


def _delta_cell(grid: Grid, i: int, row: dict) -> str:
    if row["miou_delta"] is None:
        return ""
    named = grid.configs[i].compare_to
    return f"{100 * row['miou_delta']:+.2f}" + (f" vs {named}" if named else "")


def _md_row(row: dict, cols: list[str], delta: str) -> list[str]:
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    cells = [row[c] for c in cols[: cols.index("miou")]]
    cells += [pct(row["miou"]), delta, pct(row["pixel_acc"])]
    if "miou_crf" in row:
        cells.append(pct(row["miou_no_crf"]) if row["miou_crf"] is not None else "")
    if "passes_per_image" in row:
        cells.append(row["passes_per_image"])
    if "params_m" in row:
        cells += [f"{row['params_m']:.3f}", f"{row['final_loss']:.3f}"]
    if "paper" in row:
        cells.append(row["paper"])
    return [str(c).replace("|", "\\|") for c in cells]


def _in_data(path: Path, d: Path) -> str:
    path = Path(path).absolute()
    return path.relative_to(d).as_posix() if path.is_relative_to(d) else shown(path)


def header_lines(grid: Grid, shared: Shared) -> list[str]:
    p = grid.params
    d = data_dir(p)
    title = grid.title or f"Ablation {grid.name}"
    lines = [f"# {title}", ""]
    if grid.description:
        lines += [" ".join(grid.description.split()), ""]
    eval_line = (f"Evaluated on {grid.eval_set}: {len(shared.eval_ids)} images of "
                 f"`{_in_data(shared.val_list, d)}` (split as the evaluate stage does: "
                 f"crf_search.cv_images {p.crf_search.cv_images}, seed {p.base.seed}), at full "
                 f"resolution.")
    if grid.kind == "inference":
        lines.append(f"One trained model: `{_in_data(grid.model, d)}` (preset "
                     f"{shared.model_spec.get('preset')}, trained at output stride "
                     f"{shared.train_output_stride}, md5 {file_md5(grid.model)[:12]}). "
                     + eval_line)
    else:
        ft = p.finetune
        hard = ", hard images repeated" if ft.use_bootstrap else ""
        lines.append(f"Budget per configuration: {ft.iterations} iterations of batch "
                     f"{ft.batch_size}, {ft.crop_size}x{ft.crop_size} crops (scales "
                     f"{ft.scale_min:g}-{ft.scale_max:g}), {ft.optimizer} lr {ft.lr:g} with "
                     f"{ft.warmup_iters} warmup steps and poly decay, from scratch on train_aug "
                     f"({shared.n_train} images{hard}), seed {p.base.seed}. " + eval_line)
    if grid.crf_params is not None:
        lines.append(f"CRF parameters from `{_in_data(grid.crf_file, d)}`: "
                     + ", ".join(f"{k} {v:g}" for k, v in grid.crf_params.to_dict().items())
                     + ".")
    lines += [f"MLflow: a parent run tagged `grid={grid.name}` in experiment "
              f"`{tracking.EXPERIMENT}` with one child run per row (timings there).", ""]
    return lines


def write_tables(grid: Grid, shared: Shared, rows: list[dict],
                 out_dir: Path) -> tuple[Path, Path]:
    csv_cols, csv_rows, md_cols = table_rows(grid, rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_cols, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows)
    md = header_lines(grid, shared)
    md += ["| " + " | ".join(md_cols) + " |", "|" + "---|" * len(md_cols)]
    md += ["| " + " | ".join(_md_row(r, csv_cols, _delta_cell(grid, i, r))) + " |"
           for i, r in enumerate(csv_rows)]
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = atomic_write_text(out_dir / "table.md", "\n".join(md) + "\n")
    csv_path = atomic_write_text(out_dir / "table.csv", buf.getvalue())
    return md_path, csv_path
