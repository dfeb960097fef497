"""Ablation grids (pipelines.tools.ablate): one MLflow parent run with a child run per configuration,
each with its settings and metrics, the comparison table as Markdown and CSV, and one-line errors
for bad grid files. Runs on a tiny synthetic dataset with the micro preset."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deeplab_core.config import deep_merge
from pipelines import tracking
from pipelines.tools import ablate
from pipelines.common import REPO


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """data/prepared of a tiny synthetic VOC (48x64): 6 train, 6 val images."""
    from deeplab_core.data.synthetic import generate_synthetic
    from deeplab_core.data.prepare import prepare_datasets

    root = tmp_path_factory.mktemp("ablate_data")
    generate_synthetic(root / "raw", seed=3, image_size=(48, 64), n_voc_train=6, n_voc_val=6,
                       n_sbd_train=0, n_sbd_val=0, sbd_overlap_val=0, n_coco_train=0,
                       n_coco_val=0, progress=False)
    prepare_datasets(root / "raw" / "VOCdevkit" / "VOC2012", None, None,
                     root / "data" / "prepared", progress=False)
    return root / "data"


@pytest.fixture
def project(tmp_path, tiny_data, monkeypatch) -> dict:
    """A scratch project as cwd, MLflow in its own sqlite store, params = defaults + micro."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "DEEPLAB_PIPELINE_RUN"):
        monkeypatch.delenv(var, raising=False)
    raw = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                     yaml.safe_load((REPO / "tests" / "micro_params.yaml").read_text()))
    raw = deep_merge(raw, {"base": {"data_dir": str(tiny_data), "device": "cpu"},
                           "crf_search": {"cv_images": 2}, "evaluate": {"crf_workers": 1}})
    return {"root": tmp_path, "data": tiny_data, "params": raw}


def write_grid(root: Path, name: str, spec: dict) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def micro_model(path: Path) -> Path:
    from deeplab_core.engine.checkpoint import build_from_spec, model_spec, save_checkpoint

    spec = model_spec("micro", 21, 16)
    save_checkpoint(path, build_from_spec(spec), spec)
    return path


def mlflow_runs(root: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client.search_runs([exp.experiment_id])


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_inference_grid_runs_nested_with_params_metrics_and_tables(project):
    root, data = project["root"], project["data"]
    model = micro_model(root / "model.pt")
    crf = root / "best_params.json"
    from deeplab_core.crf.densecrf import CRFParams
    crf.write_text(json.dumps({"params": CRFParams(iterations=2).to_dict()}))
    path = write_grid(root, "inf", {
        "kind": "inference", "title": "inference test", "model": str(model),
        "crf_params": str(crf), "cumulative": True, "configs": [
            {"name": "OS16", "inference": {"output_stride": 16}},
            {"name": "OS8 + flip", "inference": {"output_stride": 8, "flip": True}},
            {"name": "+ CRF", "inference": {"crf": True}}]})
    grid = ablate.load_grid(path, project["params"])
    # cumulative: the last row keeps OS8 and flip from the one before it
    assert grid.configs[2].params.inference.output_stride == 8
    assert grid.configs[2].params.inference.flip is True

    rows = ablate.run_grid(grid, progress=False)
    assert [r["config"] for r in rows] == ["OS16", "OS8 + flip", "+ CRF"]

    runs = mlflow_runs(root)
    parents = [r for r in runs if r.data.tags.get("stage") == "ablation"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["grid"] == "inf" and "mlflow.parentRunId" not in parent.data.tags
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 == len(runs) - 1
    by_name = {r.data.tags["ablation_config"]: r for r in children}
    assert by_name["OS16"].data.params["eval.output_stride"] == "16"
    assert by_name["OS8 + flip"].data.params["eval.output_stride"] == "8"
    assert by_name["OS8 + flip"].data.params["eval.flip"] == "True"
    assert by_name["+ CRF"].data.params["crf.iterations"] == "2"
    for r in children:
        assert r.data.tags["grid"] == "inf"
        assert {"eval.scales", "eval.crf", "eval.set", "model.file"} <= set(r.data.params)
        assert {"miou", "miou_no_crf", "pixel_acc", "seconds_per_image"} <= set(r.data.metrics)
        assert 0.0 <= r.data.metrics["miou"] <= 1.0
    assert "miou_crf" in by_name["+ CRF"].data.metrics
    assert parent.data.metrics["n_configs"] == 3

    out = data / "ablations" / "inf"
    cols, table = read_csv(out / "table.csv")
    assert cols == ["config", "eval OS", "flip", "CRF", "miou", "miou_delta", "delta_vs",
                    "pixel_acc", "miou_no_crf", "miou_crf", "passes_per_image"]
    assert [r["config"] for r in table] == ["OS16", "OS8 + flip", "+ CRF"]
    assert [r["eval OS"] for r in table] == ["16", "8", "8"]
    assert [r["passes_per_image"] for r in table] == ["1", "2", "2"]
    assert [float(r["miou"]) for r in table] == \
        [by_name[n].data.metrics["miou"] for n in ("OS16", "OS8 + flip", "+ CRF")]
    assert table[0]["miou_delta"] == "" and table[2]["miou_crf"] != ""
    assert [r["delta_vs"] for r in table] == ["", "OS16", "OS8 + flip"]
    md = (out / "table.md").read_text().splitlines()
    body = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| config")]
    assert len(body) == 3 and md[0] == "# inference test"
    assert any("Δ vs previous (points)" in ln for ln in md)
    # the parent run holds the tables and the grid file
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "table")}
    assert arts == {"table/table.md", "table/table.csv"}
    assert client.list_artifacts(parent.info.run_id, "grid")[0].path == "grid/inf.yaml"

    # the files hold what the same inputs reproduce (no timings, no run ids): a rerun writes
    # the same bytes
    ablate.run_grid(grid, out_dir=root / "again", progress=False)
    for name in ("table.md", "table.csv"):
        assert (root / "again" / name).read_bytes() == (out / name).read_bytes()


def test_train_grid_trains_each_config_and_logs_its_model(project, tmp_path):
    root = project["root"]
    path = write_grid(root, "heads", {
        "kind": "train",
        "base": {"model": {"preset": "micro"},
                 "finetune": {"iterations": 2, "batch_size": 2, "crop_size": 32,
                              "warmup_iters": 0, "log_every": 1, "init_from_pretrain": False,
                              "use_bootstrap": False}},
        "configs": [{"name": "rates (1,2) + pooling"},
                    {"name": "no ASPP, no pooling",
                     "model": {"overrides": {"aspp_rates": [], "image_pooling": False}}},
                    {"name": "no ASPP", "model": {"overrides": {"aspp_rates": []}},
                     "compare_to": "no ASPP, no pooling"}]})
    rows = ablate.run_grid(ablate.load_grid(path, project["params"]), out_dir=tmp_path / "out",
                           progress=False)
    assert len(rows) == 3
    runs = mlflow_runs(root)
    parent = next(r for r in runs if r.data.tags.get("stage") == "ablation")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    for r in children:
        p = r.data.params
        assert p["model.preset"] == "micro" and p["finetune.iterations"] == "2"
        assert {"model.aspp_rates", "model.image_pooling", "model.multi_grid"} <= set(p)
        assert {"miou", "final_loss", "train_seconds", "params_m"} <= set(r.data.metrics)
        assert [a.path for a in client.list_artifacts(r.info.run_id, "model")] == \
            ["model/model.pt"]
    by_name = {r.data.tags["ablation_config"]: r for r in children}
    assert by_name["no ASPP, no pooling"].data.params["model.aspp_rates"] == "[]"
    cols, table = read_csv(tmp_path / "out" / "table.csv")
    assert cols == ["config", "aspp_rates", "image_pooling", "miou", "miou_delta", "delta_vs",
                    "pixel_acc", "params_m", "final_loss"]
    assert [(r["aspp_rates"], r["image_pooling"]) for r in table] == [
        ("(1, 2)", "yes"), ("none", "no"), ("none", "yes")]
    assert [r["delta_vs"] for r in table] == ["", "rates (1,2) + pooling", "no ASPP, no pooling"]
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| Δ vs first, or vs the row named (points) |" in md
    body = [ln for ln in md.splitlines() if ln.startswith("| no ASPP")]
    assert " vs " not in body[0] and " vs no ASPP, no pooling |" in body[1]
    assert "Budget per configuration: 2 iterations of batch 2, 32x32 crops" in md


def test_cli_runs_the_grid_as_a_prefect_flow_with_nested_runs(project, prefect_api_url):
    """`python -m pipelines.tools.ablate GRID --out DIR --model FILE`: each configuration a Prefect
    task of the `ablate` flow, its MLflow run a child of the flow's parent run."""
    root = project["root"]
    (root / "params.yaml").write_text(yaml.safe_dump(project["params"]))
    micro_model(root / "model.pt")
    write_grid(root, "cli", {"kind": "inference", "model": "elsewhere.pt", "configs": [
        {"name": "OS16"}, {"name": "OS8", "inference": {"output_stride": 8}}]})
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PYTHONPATH": str(REPO),
           "DEEPLAB_PARAMS": str(root / "params.yaml")}
    proc = subprocess.run([sys.executable, "-m", "pipelines.tools.ablate", "cli.yaml", "--out",
                           "tables", "--model", "model.pt"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Flow run" in proc.stdout + proc.stderr and "| OS8 | 8 |" in proc.stdout
    runs = mlflow_runs(root)
    parent = next(r for r in runs if r.data.tags.get("stage") == "ablation")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["ablation_config"] for r in children) == ["OS16", "OS8"]
    cols, table = read_csv(root / "tables" / "table.csv")
    assert [r["config"] for r in table] == ["OS16", "OS8"] and cols[:2] == ["config", "eval OS"]


# ----------------------------------------------------------------------------- bad grid files
GOOD = {"kind": "inference", "model": "model.pt", "configs": [{"name": "a"}]}


@pytest.mark.parametrize("spec, expected", [
    ({**GOOD, "modle": "x"}, "unknown key 'modle'"),
    ({k: v for k, v in GOOD.items() if k != "model"}, "key 'model' is missing"),
    ({**GOOD, "model": "nowhere/model.pt"}, "model = 'nowhere/model.pt': file "),
    ({**GOOD, "kind": "sweep"}, "kind = 'sweep'"),
    ({**GOOD, "configs": [{"name": "a", "inference": {"flipp": True}}]},
     "configs[0] ('a'): inference.flipp: unknown key"),
    ({**GOOD, "configs": [{"name": "a", "model": {"preset": "light"}}]},
     "configs[0] ('a'): key 'model.preset' cannot vary in a inference grid"),
    ({**GOOD, "configs": [{"name": "a"}, {"name": "a"}]}, "configs[1] ('a'): name used twice"),
    ({**GOOD, "configs": [{"name": "a"}, {"name": "b", "compare_to": "c"}]},
     "configs[1] ('b'): compare_to = 'c': not the name of an earlier configuration ('a')"),
    ({**GOOD, "configs": [{"inference": {"flip": True}}]}, "configs[0]: each configuration needs"),
    ({**GOOD, "configs": [{"name": "a", "inference": {"crf": True}}]},
     "key 'crf_params' is missing"),
    ({**GOOD, "crf_params": "crf.json", "configs": [{"name": "a", "inference": {"crf": True}}]},
     "crf_params = 'crf.json': file "),
    ({**GOOD, "columns": ["eval.os"]}, "columns: 'eval.os' is not a setting of this grid"),
    ({"kind": "train", "base": {"model": {"preset": "micro"},
                                "finetune": {"init_from_pretrain": False}},
      "configs": [{"name": "mg", "model": {"overrides": {"multi_grid": [1, 2, 4]}}}]},
     "configs[0] ('mg'): model.overrides.multi_grid = [1, 2, 4] has no effect on backbone "
     "'mobilenetv2'"),
    ({"kind": "train", "base": {"finetune": {"init_from_pretrain": False}},
      "configs": [{"name": "tf", "model": {"overrides": {"relu_placement": "tf"}}}]},
     "configs[0] ('tf'): model.preset / model.overrides: relu_placement 'tf' applies to the "
     "xception65 backbone only, not 'mobilenetv2'"),
    ({"kind": "train", "base": {"finetune": {"init_from_pretrain": False}},
      "configs": [{"name": "x", "model": {"overrides": {"aspp_rate": [1]}}}]},
     "configs[0] ('x'): model.preset / model.overrides: unknown override key(s) ['aspp_rate']"),
    ({"kind": "train", "configs": [{"name": "x"}]}, "finetune.init_from_pretrain is true"),
])
def test_bad_grid_fails_with_one_line_naming_file_and_key(project, spec, expected):
    root = project["root"]
    micro_model(project["data"] / "model.pt")  # GOOD's model, relative to base.data_dir
    path = write_grid(root, "bad", spec)
    with pytest.raises(ablate.GridError) as err:
        ablate.load_grid(path, project["params"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("bad.yaml: ") and expected in msg, msg


def test_cli_bad_grid_exits_2_with_one_line_before_any_work(project, capsys):
    path = write_grid(project["root"], "bad", {**GOOD, "model": "missing.pt"})
    with pytest.raises(SystemExit) as exit_:
        ablate.main([str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GridError: " in err[0] and "bad.yaml: model = 'missing.pt'" in err[0]
    assert not (project["root"] / "mlflow.db").exists()
    with pytest.raises(SystemExit):
        ablate.main(["no_such_grid"])
    assert "grid 'no_such_grid': no such file" in capsys.readouterr().err


def test_shipped_grids_are_valid(project):
    """Both shipped grids parse against the default params (their files aside)."""
    root = project["root"]
    model, crf = micro_model(root / "m.pt"), root / "crf.json"
    crf.write_text(json.dumps({"params": {}}))
    inf = ablate.load_grid("v3_inference", project["params"], model=str(model),
                           crf_params=str(crf))
    assert [c.name for c in inf.configs] == ["OS16", "OS8", "+ MS", "+ flip", "+ CRF"]
    assert inf.configs[-1].params.inference.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    heads = ablate.load_grid("head_ablation", project["params"])
    assert heads.kind == "train" and len(heads.configs) >= 5


# ----------------------------------------------------------------------------- dvc exp run
def test_dvc_exp_env_maps_to_tags():
    assert tracking.dvc_exp_tags({}) == {}
    assert tracking.dvc_exp_tags({"DVC_EXP_NAME": "lr-0.01", "DVC_EXP_BASELINE_REV": "abc"}) \
        == {"dvc_exp": "lr-0.01", "dvc_exp_baseline": "abc"}


def test_dvc_exp_run_gives_stage_commands_the_experiment_name(tmp_path):
    """A real `dvc exp run -n NAME -S ...`: the stage command sees DVC_EXP_NAME, which the stage
    runs turn into the `dvc_exp` tag."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        env.pop(var, None)

    def sh(*cmd):
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True,
                              text=True, timeout=120)

    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  show:\n    cmd: python -c \"import json; from pipelines.tracking import "
        "dvc_exp_tags; print(json.dumps(dvc_exp_tags()))\" > tags.json\n"
        "    params: [lr]\n    outs: [tags.json]\n")
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "init")
    sh("dvc", "exp", "run", "-n", "lr-sweep-1", "-S", "lr=0.01")
    tags = json.loads((tmp_path / "tags.json").read_text())
    assert tags["dvc_exp"] == "lr-sweep-1"
    head = sh("git", "rev-parse", "HEAD").stdout.strip()
    assert tags["dvc_exp_baseline"] == head


PAPER_GRIDS = {"v2_aspp_vgg16": ["LargeFOV", "ASPP-S", "ASPP-L"],
               "v3_cascade_depth": ["block4", "block5", "block6", "block7"],
               "v3_multi_grid": ["MG (1,1,1)", "MG (1,2,1)", "MG (1,2,3)", "MG (1,2,4)",
                                 "MG (2,2,2)"],
               "v3_output_stride": ["OS8", "OS16", "OS32"],
               "v3plus_decoder": ["no decoder"] + [f"decoder, {c} channels"
                                                   for c in (8, 16, 32, 48, 64)]}


@pytest.mark.parametrize("name", sorted(PAPER_GRIDS))
def test_paper_ablation_grids_set_the_papers_rows(project, name):
    """The grids of the papers' own ablation tables parse against the default params; each row
    is the paper's network (not a narrow CPU stand-in), and a figure shown beside a row is that
    table's figure in tests/paper_figures.py (marked unverified where not checked)."""
    import re

    from paper_figures import checked, figures_of

    grid = ablate.load_grid(name, project["params"])
    assert grid.kind == "train" and [c.name for c in grid.configs] == PAPER_GRIDS[name]
    for c in grid.configs:
        m = c.settings["model"]
        assert m["backbone"] in ("vgg16", "resnet50", "resnet101"), c.name
        assert c.params.model.pretrained_backbone.endswith("-imagenet.pth")
        assert (c.params.finetune.optimizer, c.params.finetune.amp) == ("sgd", False)
        if c.paper:
            value, paper, table = re.fullmatch(
                r"(\d+\.\d\d) \((v1|v2|v3\+?) (Table \d+)(?:; unverified)?\)", c.paper).groups()
            assert (table, float(value)) in figures_of(paper), (name, c.name)
            assert ("unverified" in c.paper) == (not checked(paper, table, float(value)))
    if name == "v3_cascade_depth":
        assert [c.settings["model"]["cascade_blocks"] for c in grid.configs] == [0, 1, 2, 3]
    if name == "v3_multi_grid":
        assert [tuple(c.settings["model"]["multi_grid"]) for c in grid.configs] == \
            [(1, 1, 1), (1, 2, 1), (1, 2, 3), (1, 2, 4), (2, 2, 2)]
    if name == "v3_output_stride":
        assert [c.settings["model"]["output_stride"] for c in grid.configs] == [8, 16, 32]
    if name == "v3plus_decoder":  # Table 1's decoder: one [3x3, 256] refinement, channels vary
        rows = [c.settings["model"] for c in grid.configs]
        assert [r["decoder"] for r in rows] == [False] + [True] * 5
        assert [(r["low_level_channels"], r["decoder_convs"]) for r in rows[1:]] == \
            [(c, 1) for c in (8, 16, 32, 48, 64)]
    if name == "v2_aspp_vgg16":
        assert [c.settings["model"]["aspp_rates"] if c.settings["model"]["head"] == "aspp_v2"
                else c.settings["model"]["fc6_rate"] for c in grid.configs] == \
            [12, (2, 4, 8, 12), (6, 12, 18, 24)]


def test_paper_column_appears_in_the_table(project):
    grid = ablate.load_grid("v3_multi_grid", project["params"])
    rows = [{"config": c.name, "settings": c.settings,
             "metrics": {"miou": 0.5, "miou_no_crf": 0.5, "pixel_acc": 0.9, "params_m": 1.0,
                         "final_loss": 0.1}} for c in grid.configs]
    cols, out, md = ablate.table_rows(grid, rows)
    assert cols[-1] == "paper" and md[-1] == "paper's mIoU (%)"
    assert [r["paper"] for r in out][:2] == ["75.76 (v3 Table 3)",
                                             "76.66 (v3 Table 3)"]
