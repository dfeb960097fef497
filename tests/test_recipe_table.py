"""The recipe tables people read (README and docs/recipes.md) against the presets and against the
papers' figures in tests/paper_figures.py, cell by cell: each cited figure is that table's figure
in the paper and is one the preset's own header cites; each schedule number is the preset's
finetune setting; each setting named (output strides, COCO, bootstrapping, multi-scale and flip,
the CRF) is what the preset sets. The preset headers name only keys that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deeplab_core.config import parse_params
from paper_figures import figures_of
from pipelines.tools.use_preset import apply_preset

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "presets").glob("*.yaml"))
DOCS = (REPO / "README.md", REPO / "docs" / "recipes.md")
HEADER_CITATION = re.compile(r"(\d+\.\d\d) % \((v1|v2|v3\+?) (Table \d+)\)")
# "(v3 Table 4)" or "(v3 Tables 5 and 6)": the figures since the previous citation
CELL_CITATION = re.compile(r"\((v1|v2|v3\+?) Tables? (\d+)(?: and (\d+))?\)")
# The v3 protocol's finetune numbers, as the tables spell them out in its first row.
V3_PROTOCOL = {"batch": 16, "lr": 0.007, "crop": 513, "iterations": 30000}


def _rows(path: Path) -> dict[str, list[str]]:
    """The recipe table's rows, preset -> cells; the table is the one headed `| preset |`."""
    lines = path.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| preset |"))
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def _cited(cell: str) -> set[tuple[float, str, str]]:
    """{(mIoU, paper, table)} of a figures cell; each figure takes the next citation after it."""
    out, pos = set(), 0
    for m in CELL_CITATION.finditer(cell):
        values = re.findall(r"(\d+\.\d\d) %", cell[pos:m.start()])
        assert values, f"citation {m.group(0)} cites no figure in {cell!r}"
        for table in filter(None, m.groups()[1:]):
            out |= {(float(v), m.group(1), f"Table {table}") for v in values}
        pos = m.end()
    assert not re.findall(r"\d+\.\d\d %", cell[pos:]), f"uncited figure in {cell!r}"
    return out


def _applied(name: str, tmp_path: Path):
    out = tmp_path / f"{name}.yaml"
    apply_preset(REPO / "params.yaml", REPO / "presets" / f"{name}.yaml", out)
    return parse_params(yaml.safe_load(out.read_text()))


def _schedule(cell: str) -> dict[str, float]:
    """The numbers a schedule cell states; "v3 protocol" stands for V3_PROTOCOL's."""
    got: dict[str, float] = dict(V3_PROTOCOL) if cell.startswith("v3 protocol") else {}
    if m := re.search(r"batch (\d+)", cell):
        got["batch"] = int(m.group(1))
    if m := re.search(r"(?:^|[ ,])(?:poly |finetune )?lr ([0-9.]+e-\d+|[0-9.]+)", cell):
        got["lr"] = float(m.group(1))
    if m := re.search(r"(\d+) crops", cell):
        got["crop"] = int(m.group(1))
    if m := re.search(r"(?<!every )\b(\d+)(K?) it\b", cell):
        got["iterations"] = int(m.group(1)) * (1000 if m.group(2) else 1)
    if m := re.search(r"weight decay ([0-9.]+e-\d+|[0-9.]+)", cell):
        got["weight_decay"] = float(m.group(1))
    if m := re.search(r"every (\d+) it", cell):
        got["step"] = int(m.group(1))
    return got


def test_both_tables_list_every_preset_with_the_same_cells():
    """Same cells in both; a Markdown link's target may differ (each page links relatively)."""
    tables = [{k: [re.sub(r"\]\([^)]*\)", "]", c) for c in v] for k, v in _rows(p).items()}
              for p in DOCS]
    assert sorted(tables[0]) == PRESETS
    assert tables[0] == tables[1]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", PRESETS)
def test_each_cited_figure_is_the_papers_and_the_presets(doc, name):
    setting, figures, _ = _rows(doc)[name]
    header = [ln for ln in (REPO / "presets" / f"{name}.yaml").read_text().splitlines()
              if ln.startswith("#")]
    in_header = {(float(v), p, t) for ln in header for v, p, t in HEADER_CITATION.findall(ln)}
    cited = _cited(figures)
    if name.endswith("_trainval"):  # the test-server system has no val figure
        assert cited == set() and "none on val" in figures
        return
    assert cited, f"{doc.name}: {name} cites no figure"
    for miou, paper, table in cited:
        assert (table, miou) in figures_of(paper), (doc.name, name, miou, paper, table)
        assert (miou, paper, table) in in_header, (doc.name, name, miou, paper, table)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", PRESETS)
def test_each_schedule_number_is_the_presets(doc, name, tmp_path):
    setting, _, schedule = _rows(doc)[name]
    ft = _applied(name, tmp_path).finetune
    stated = _schedule(schedule)
    assert {"batch", "lr", "iterations"} <= set(stated), (doc.name, name, schedule)
    actual = {"batch": ft.batch_size, "lr": ft.lr, "crop": ft.crop_size,
              "iterations": ft.iterations, "weight_decay": ft.weight_decay,
              "step": ft.lr_step_size}
    for key, value in stated.items():
        assert actual[key] == pytest.approx(value), (doc.name, name, key, schedule)
    assert ("BN frozen" in schedule + setting) == (ft.batch_norm == "frozen"), (doc.name, name)
    if "accumulated" in schedule:
        m = re.search(r"(\d+) x (\d+) accumulated", schedule)
        assert m and int(m.group(1)) == ft.accumulate_steps
        assert int(m.group(1)) * int(m.group(2)) == ft.batch_size


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", PRESETS)
def test_each_setting_named_is_what_the_preset_sets(doc, name, tmp_path):
    setting = _rows(doc)[name][0]
    p = _applied(name, tmp_path)
    coco = p.pretrain.enabled and p.prepare.coco_root is not None
    assert coco == ("COCO pretraining" in setting), (doc.name, name, setting)
    if "no COCO" in setting:
        assert not coco
    evaluated = re.findall(r"(?:eval|evaluated at) OS ?(\d+)", setting)
    for os_ in evaluated:
        assert (p.inference.output_stride or p.model.output_stride) == int(os_), (doc.name, name)
    trained = re.findall(r"OS ?(\d+)", re.sub(r"(?:eval|evaluated at) OS ?\d+", "", setting))
    assert trained, (doc.name, name, setting)
    assert {int(t) for t in trained} == {p.model.output_stride}, (doc.name, name, setting)
    multi = len(p.inference.scales) > 1
    assert ("MS + flip" in setting) == (multi and p.inference.flip), (doc.name, name, setting)
    if "single scale" in setting:
        assert not multi
    assert setting.endswith("CRF") == p.inference.crf, (doc.name, name, setting)
    if "no bootstrapping" in setting:
        assert not p.finetune.use_bootstrap
    elif "bootstrapping" in setting:
        assert p.finetune.use_bootstrap


KEY = re.compile(r"(?<![\w/.])(model|prepare|pretrain|finetune|train|inference|crf_search|register|"
                 r"bootstrap|validate)\.([a-z_]+)\b")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_headers_name_only_keys_that_exist(name, tmp_path):
    """A key spelled in a preset's comments (e.g. `inference.output_stride`) is a real key of
    that section, so a reader who sets it is not sent to a key that was renamed."""
    p = _applied(name, tmp_path)
    text = (REPO / "presets" / f"{name}.yaml").read_text()
    for section, key in KEY.findall("\n".join(ln for ln in text.splitlines()
                                              if ln.lstrip().startswith("#"))):
        section_model = getattr(p, "finetune" if section == "train" else section, None)
        assert section_model is not None and key in type(section_model).model_fields, \
            f"presets/{name}.yaml names {section}.{key}, which params.yaml does not have"
