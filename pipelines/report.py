"""Print the results table of the last pipeline run: val mIoU before/after CRF and per-class IoU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.common import data_dir, get_params


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def format_report(d: Path) -> str:
    m = json.loads((d / "metrics" / "evaluate.json").read_text())
    rows = json.loads((d / "eval" / "per_class_iou.json").read_text())
    lines = [f"Results on {m['eval_set']}, {m['n_images']} images "
             f"(scales {m['scales']}, flip {m['flip']})", "",
             f"{'':24s}{'DeepLab':>9s}{'+ CRF':>9s}",
             f"{'mIoU (%)':24s}{_pct(m['miou']):>9s}{_pct(m.get('miou_crf')):>9s}",
             f"{'pixel accuracy (%)':24s}{_pct(m['pixel_acc']):>9s}"
             f"{_pct(m.get('pixel_acc_crf')):>9s}",
             f"{'mIoU whole val (%)':24s}{_pct(m['val_full']['miou']):>9s}"
             f"{_pct(m['val_full'].get('miou_crf')):>9s}",
             f"{'mIoU CRF-CV subset (%)':24s}{_pct(m['crf_cv_subset']['miou']):>9s}"
             f"{_pct(m['crf_cv_subset'].get('miou_crf')):>9s}", "", "per-class IoU (%):"]
    for r in rows:
        lines.append(f"  {r['class']:22s}{_pct(r['iou']):>9s}{_pct(r['iou_crf']):>9s}")
    reg = d / "register" / "registration.json"
    if reg.is_file():
        g = json.loads(reg.read_text())
        lines += ["", f"registry: {g['model_uri']} aliases {g['aliases']} ({g['reason']})"]
    return "\n".join(lines)


def print_report(d: Path) -> None:
    print(format_report(d))


def main() -> None:
    d = data_dir(get_params())
    if not (d / "metrics" / "evaluate.json").is_file():
        print(f"no results yet in {d}/metrics: run `make run` (or `dvc repro`)", file=sys.stderr)
        sys.exit(2)
    print_report(d)


if __name__ == "__main__":
    main()
