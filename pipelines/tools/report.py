"""Print the results table of the last pipeline run: the model as served (its inference protocol,
with the CRF when it earned its place) next to the network alone and with the searched CRF, per
class, and within the boundary trimap bands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.common import data_dir, get_params
from pipelines.paths import StagePaths


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def _row(label: str, served, plain, crf) -> str:
    return f"{label:24s}{_pct(served):>10s}{_pct(plain):>9s}{_pct(crf):>9s}"


# (label, evaluate.json key) of the headline table, in print order.
HEADLINE_ROWS = (("mIoU (%)", "miou"), ("pixel accuracy (%)", "pixel_acc"),
                 ("mean pixel accuracy (%)", "mean_pixel_acc"), ("freq-weighted IoU (%)", "fwiou"),
                 ("mean precision (%)", "mean_precision"), ("mean recall (%)", "mean_recall"),
                 ("mean F1 (%)", "mean_f1"))


def per_class_table(rows: list[dict]) -> list[str]:
    """Per-class IoU / precision / recall / F1 (plain | CRF), one line per class, from the rows of
    data/eval/per_class.json in their (class-id) order."""
    lines = [f"  {'class':16s}" + "".join(f"{h:^15s}" for h in ("IoU", "precision", "recall",
                                                                 "F1"))]
    for r in rows:
        cells = "".join(f"{_pct(r[k + '_no_crf']).strip():>7s}|{_pct(r[k + '_crf']).strip():<7s}"
                        for k in ("iou", "precision", "recall", "f1"))
        lines.append(f"  {r['class'][:16]:16s}{cells}")
    return lines


def trimap_table(rows: list[dict]) -> list[str]:
    lines = [f"  {'band (px)':>9s}{'mIoU':>9s}{'+ CRF':>9s}{'acc':>9s}{'+ CRF':>9s}"]
    for r in rows:
        lines.append(f"  {r['band_width']:>9d}{_pct(r['miou_no_crf']):>9s}"
                     f"{_pct(r.get('miou_crf')):>9s}{_pct(r['pixel_acc_no_crf']):>9s}"
                     f"{_pct(r.get('pixel_acc_crf')):>9s}")
    return lines


def format_report(d: Path) -> str:
    p = StagePaths(d)
    m = json.loads(p.metrics_file("evaluate").read_text())
    rows = json.loads(p.per_class.read_text())
    s = m["eval_settings"]
    lines = [f"Results on {m['eval_set']}, {m['n_images']} images (scales {s['scales']}, "
             f"flip {s['flip']}, eval output stride {s['output_stride'] or 'as trained'})",
             f"As served: {'with' if m.get('crf_applied') else 'without'} the CRF. "
             f"{m.get('crf_decision', '')}",
             "", f"{'':24s}{'as served':>10s}{'no CRF':>9s}{'+ CRF':>9s}"]

    def row(label, d, k):
        return _row(label, d[k], d.get(f"{k}_no_crf", d[k]), d.get(f"{k}_crf"))

    lines += [row(label, m, k) for label, k in HEADLINE_ROWS]
    lines += [row("mIoU whole val (%)", m["val_full"], "miou"),
              row("mIoU CRF-CV subset (%)", m["crf_cv_subset"], "miou"),
              "", "per class (%), no CRF|+ CRF:"]
    lines += per_class_table(rows)
    trimap = p.trimap_json
    if trimap.is_file():
        lines += ["", "within a band around object boundaries (trimap, %):"]
        lines += trimap_table(json.loads(trimap.read_text()))
    reg = p.registration
    if reg.is_file():
        g = json.loads(reg.read_text())
        lines += ["", f"registry: {g['model_uri']} aliases {g['aliases']} ({g['reason']})"]
    return "\n".join(lines)


def print_report(d: Path) -> None:
    print(format_report(d))


def main() -> None:
    d = data_dir(get_params())
    if not StagePaths(d).metrics_file("evaluate").is_file():
        print(f"no results yet in {d}/metrics: run `make run` (or `dvc repro`)", file=sys.stderr)
        sys.exit(2)
    print_report(d)


if __name__ == "__main__":
    main()
