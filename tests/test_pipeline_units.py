"""Unit pieces of the pipeline layer: promotion rule, atomic outputs, the stage entry wrapper,
the Great Expectations suite over manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_sample
from deeplab_core.config import ConfigError, ValidateConfig, parse_params
from pipelines.common import REPO, StageError, data_dir, params_path, run_stage
from pipelines.stages.shared import atomic_dir, write_json
from pipelines.stages.register import decide_promotion
from pipelines.tracking import flatten


# ----------------------------------------------------------------------------- promotion rule
def test_promotes_over_no_champion():
    promote, reason = decide_promotion(0.1, None, same_eval_set=False, min_improvement=0.5)
    assert promote is True and "no champion" in reason


@pytest.mark.parametrize("candidate, champion", [(0.60, 0.70), (0.70, 0.70), (0.0, 1e-9)])
def test_never_promotes_worse_or_equal(candidate, champion):
    promote, reason = decide_promotion(candidate, champion, same_eval_set=True,
                                       min_improvement=0.0)
    assert promote is False and "does not beat" in reason


def test_never_compares_across_eval_sets():
    promote, reason = decide_promotion(0.99, 0.10, same_eval_set=False, min_improvement=0.0)
    assert promote is False and "different eval set" in reason


def test_promotes_better_model_on_same_eval_set():
    promote, reason = decide_promotion(0.71, 0.70, same_eval_set=True, min_improvement=0.0)
    assert promote is True and "0.7100 beats champion 0.7000" in reason


@pytest.mark.parametrize("candidate, expected", [(0.705, False), (0.7099, False), (0.72, True)])
def test_min_improvement_is_respected(candidate, expected):
    promote, _ = decide_promotion(candidate, 0.70, same_eval_set=True, min_improvement=0.01)
    assert promote is expected


# ----------------------------------------------------------------------------- atomic outputs
def test_atomic_dir_replaces_old_content(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final) as tmp:
        assert tmp != final and tmp.parent == final.parent and tmp.is_dir()
        assert list(tmp.iterdir()) == []
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # still the old output meanwhile
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert (final / "new.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_creates_missing_output(tmp_path):
    final = tmp_path / "a" / "b" / "out"
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    assert sorted(p.name for p in final.parent.iterdir()) == ["out"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_error_leaves_old_content_and_no_temporary(tmp_path, exc_type):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(exc_type):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise exc_type("boom")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert (final / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_a_killed_run_are_cleaned(tmp_path):
    from deeplab_core.fileio import clean_stale_temporaries

    for name in (".out.tmp-abc", ".out.old-def", ".other.tmp-xyz"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "junk").write_text("from a killed run")
    with atomic_dir(tmp_path / "out") as tmp:
        assert list(tmp.iterdir()) == []  # a fresh folder, whatever lies around
        (tmp / "ok").write_text("ok")
    clean_stale_temporaries(tmp_path, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-xyz", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok"]


def test_write_json_is_complete_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m" / "metrics.json"
    write_json(path, {"miou": 0.5, "ids": [1, 2]})
    assert json.loads(path.read_text()) == {"miou": 0.5, "ids": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_params_path_and_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPLAB_PARAMS", raising=False)
    assert params_path() == REPO / "params.yaml"
    monkeypatch.setenv("DEEPLAB_PARAMS", str(tmp_path / "p.yaml"))
    assert params_path() == tmp_path / "p.yaml"
    assert data_dir(parse_params({"base": {"data_dir": "dd"}})) == REPO / "dd"
    assert data_dir(parse_params({"base": {"data_dir": str(tmp_path)}})) == tmp_path


def test_flatten_nested_sections():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2],
                                                                     "e": "x"}


# ----------------------------------------------------------------------------- run_stage
def _raiser(exc: BaseException):
    def flow():
        raise exc
    return flow


@pytest.mark.parametrize("exc", [
    ConfigError("invalid parameters in params.yaml:\n  finetune.lr = -1: bad"),
    StageError("training list not found: data/prepared/train_aug.txt"),
    FileNotFoundError("params file not found: /x/params.yaml"),
])
def test_run_stage_user_error_exits_2_with_message(capsys, exc):
    with pytest.raises(SystemExit) as info:
        run_stage(_raiser(exc))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{type(exc).__name__}: {exc}" in err
    assert "ERROR [" in err
    assert "Traceback" not in err


def test_run_stage_unexpected_error_exits_1_with_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        run_stage(_raiser(RuntimeError("kaboom")))
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: kaboom" in err


def test_run_stage_interrupt_exits_130(capsys):
    with pytest.raises(SystemExit) as info:
        run_stage(_raiser(KeyboardInterrupt()))
    assert info.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_run_stage_success_returns_normally(capsys):
    calls = []
    assert run_stage(lambda: calls.append(1)) is None
    assert calls == [1]
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- expectations
def _row(i: int, **kw) -> dict:
    r = dict(id=f"s{i}", image_readable=True, label_readable=True, image_channels=3, width=40,
             height=32, size_match=True, label_values_valid=True, ignore_fraction=0.1)
    r.update(kw)
    return r


CFG = ValidateConfig(max_ignore_fraction=0.3, min_side=16, max_side=256)


@pytest.fixture(scope="module")
def run_suite():
    from pipelines.stages.expectations import run_suite as fn
    return fn


def test_suite_passes_on_good_rows(run_suite):
    res = run_suite(pd.DataFrame([_row(i) for i in range(4)]), CFG, 2, "good")
    assert res == {"split": "good", "success": True, "n_rows": 4, "failures": []}


def test_suite_fails_naming_columns_and_ids(run_suite):
    df = pd.DataFrame([_row(0), _row(1, size_match=False), _row(2, ignore_fraction=0.9),
                       _row(3, label_values_valid=False), _row(4)])
    res = run_suite(df, CFG, 2, "bad")
    assert res["success"] is False and res["n_rows"] == 5
    by_col = {f["column"]: f for f in res["failures"]}
    assert set(by_col) == {"size_match", "ignore_fraction", "label_values_valid"}
    assert by_col["size_match"]["example_ids"] == ["s1"]
    assert by_col["ignore_fraction"]["example_ids"] == ["s2"]
    assert by_col["ignore_fraction"]["example_values"] == [0.9]
    assert by_col["ignore_fraction"]["kwargs"]["max_value"] == 0.3
    assert by_col["label_values_valid"]["example_ids"] == ["s3"]
    assert all(f["unexpected_count"] == 1 for f in res["failures"])


def test_suite_checks_row_count_and_unique_ids(run_suite):
    df = pd.DataFrame([_row(0), _row(0)])
    res = run_suite(df, CFG, 3, "small")
    assert res["success"] is False
    kinds = {f["expectation"] for f in res["failures"]}
    assert kinds == {"expect_table_row_count_to_be_between", "expect_column_values_to_be_unique"}
    row_count = next(f for f in res["failures"] if f["column"] is None)
    assert row_count["observed"] == 2


def test_suite_names_ids_of_a_filtered_manifest(run_suite):
    df = pd.DataFrame([_row(i, size_match=i != 5) for i in range(6)]).iloc[3:]
    res = run_suite(df, CFG, 1, "filtered")
    assert res["failures"][0]["example_ids"] == ["s5"]


def test_manifest_of_corrupt_jpeg_fails_the_suite(run_suite, tmp_path):
    from deeplab_core.data.io import write_jpeg, write_label_png, write_list_file
    from deeplab_core.data.manifest import build_manifest

    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        image, label = tiny_sample(rng, 32, 40)
        write_jpeg(tmp_path / "img" / f"s{i}.jpg", image)
        write_label_png(tmp_path / "lab" / f"s{i}.png", label)
        entries.append((f"s{i}", f"img/s{i}.jpg", f"lab/s{i}.png"))
    broken = tmp_path / "img" / "s1.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not jpeg data" + os.urandom(64))
    list_file = write_list_file(tmp_path / "list.txt", entries)

    records = build_manifest(list_file)
    assert [r["id"] for r in records] == ["s0", "s1", "s2"]
    bad = records[1]
    assert bad["image_exists"] is True and bad["image_readable"] is False
    assert str(broken) in bad["error"]
    assert bad["label_readable"] is True and bad["size_match"] is False
    for good in (records[0], records[2]):
        assert good["image_readable"] and good["size_match"] and good["error"] is None
        assert (good["width"], good["height"]) == (40, 32)

    res = run_suite(pd.DataFrame.from_records(records), CFG, 2, "train_aug")
    assert res["success"] is False
    by_col = {f["column"]: f for f in res["failures"]}
    assert by_col["image_readable"]["example_ids"] == ["s1"]
    assert by_col["size_match"]["example_ids"] == ["s1"]


def test_heatmap_draws_the_full_grid_or_else_the_screen_estimates():
    from types import SimpleNamespace

    from pipelines.stages.crf_search import grid_rows_for_heatmap

    cfg = SimpleNamespace(w1_grid=(3.0, 4.0), sigma_alpha_grid=(30.0, 40.0), sigma_beta_grid=(3.0,))
    grid = [(w, a, 3.0) for w in (3.0, 4.0) for a in (30.0, 40.0)]

    def row(w, a, b, n, miou, **extra):
        return {"w1": w, "sigma_alpha": a, "sigma_beta": b, "n_images": n, "miou_gt": miou,
                **extra}

    screened = {"objective": "miou_gt", "n_images": 50,
                "rows": [row(4.0, 40.0, 3.0, 50, 0.5), row(4.5, 45.0, 3.5, 50, 0.6)],
                "screen_rows": [row(*g, 4, 0.1 * i, estimate=0.2 * i) for i, g in enumerate(grid)]}
    rows, metric, title = grid_rows_for_heatmap(screened, cfg)
    assert metric == "estimate" and "estimated from 4" in title and "50" in title
    assert sorted((r["w1"], r["sigma_alpha"]) for r in rows) == sorted((w, a) for w, a, _ in grid)
    full = {"objective": "miou_gt", "n_images": 50, "rows": [row(*g, 50, 0.2) for g in grid],
            "screen_rows": []}
    rows, metric, title = grid_rows_for_heatmap(full, cfg)
    assert metric == "miou_gt" and len(rows) == 4 and "all 50" in title
    assert grid_rows_for_heatmap({"rows": [row(9.0, 9.0, 9.0, 5, 0.1)]}, cfg) == ([], "", "")


def test_crf_table_lists_full_rows_then_screen_rows(tmp_path):
    import csv

    from pipelines.stages.crf_search import write_table

    full = [{"w1": 5.0, "miou_gt": 0.4, "n_images": 50}, {"w1": 4.0, "miou_gt": 0.3, "n_images": 50}]
    screen = [{"w1": 3.0, "miou_gt": 0.9, "n_images": 4, "estimate": 0.2},
              {"w1": 6.0, "miou_gt": 0.1, "n_images": 4, "estimate": 0.35}]
    write_table(tmp_path / "t.csv", full, screen)
    with open(tmp_path / "t.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["w1"] for r in got] == ["5.0", "4.0", "6.0", "3.0"]
    assert got[0]["estimate"] == "" and got[2]["estimate"] == "0.35"
    assert {r["n_images"] for r in got[2:]} == {"4"}


# ------------------------------------------------------------------- operations around stages
def test_project_home_of_a_dvc_experiment_copy(tmp_path):
    from pipelines.common import project_home

    proj = tmp_path / "proj"
    assert project_home(proj) == proj
    assert project_home(proj / ".dvc" / "tmp" / "exps" / "tmpab12cd") == proj
    assert project_home(proj / ".dvc" / "tmp" / "other") == proj / ".dvc" / "tmp" / "other"


def test_deploy_env_cron_default_and_checks():
    from pipelines.ops import deploy_env

    assert deploy_env.cron({}) == deploy_env.cron({"DEEPLAB_RETRAIN_CRON": " "}) == "0 3 * * 0"
    assert deploy_env.cron({"DEEPLAB_RETRAIN_CRON": "30 2 * * 1"}) == "30 2 * * 1"
    with pytest.raises(deploy_env.DeployEnvError, match="DEEPLAB_RETRAIN_CRON='weekly' is not "
                                                        "a cron expression"):
        deploy_env.cron({"DEEPLAB_RETRAIN_CRON": "weekly"})
    assert deploy_env.image({"DEEPLAB_IMAGE": "reg.example/deeplab:gpu"}) == \
        "reg.example/deeplab:gpu"
    for env in ({}, {"DEEPLAB_IMAGE": ""}, {"DEEPLAB_IMAGE": "  "}):
        with pytest.raises(deploy_env.DeployEnvError, match="DEEPLAB_IMAGE is unset or empty"):
            deploy_env.image(env)


def test_deploy_env_cli_is_one_line(tmp_path):
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "pipelines.ops.deploy_env", "cron"], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "0 3 * * 0\n", "")
    bad = subprocess.run([sys.executable, "-m", "pipelines.ops.deploy_env", "image"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("ERROR [deploy]: DEEPLAB_IMAGE is unset or empty")


def test_run_titles_say_what_ran():
    from pipelines.ops.repro import run_title

    at = 1796612400.0  # 2026-12-07 03:00 UTC
    assert run_title("retrain", [], None, at) == "retrain 2026-12-07 03:00 · nothing changed"
    assert run_title("pipeline", ["evaluate", "register"],
                     {"version": "3", "promoted": True}, at) == \
        "pipeline 2026-12-07 03:00 · 2 stages: evaluate,register · v3 champion"
    assert run_title("retrain", ["register"], {"version": "4", "promoted": False}, at) == \
        "retrain 2026-12-07 03:00 · 1 stage: register · v4 not promoted"


# ----------------------------------------------------------------------------- v3 second stage
def test_finetune_trains_on_trainval_from_an_earlier_model_at_another_stride(tiny_list, tmp_path):
    """finetune.include_val adds the validated val list after train_aug; init_checkpoint starts
    from an earlier run's model (made OS8 when params ask for it); a missing file is named."""
    from deeplab_core.config import parse_params
    from deeplab_core.data.dataset import SegmentationListDataset
    from deeplab_core.engine.checkpoint import model_spec, save_checkpoint
    from deeplab_core.models import build_model
    from pipelines.common import StageError
    from pipelines.paths import StagePaths
    from pipelines.stages import finetune
    from pipelines.stages.training import make_model

    lines = tiny_list.read_text().splitlines()
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n".join(lines[:4]) + "\n")
    second.write_text("\n".join(lines[4:]) + "\n")
    ds = SegmentationListDataset(first, extra_lists=[second])
    assert len(ds) == len(lines) and ds.ids[4:] == [ln.split()[0] for ln in lines[4:]]
    with pytest.raises(ValueError, match="repeats ids of the lists before it"):
        SegmentationListDataset(first, extra_lists=[first])

    ckpt = tmp_path / "stage1.pt"
    save_checkpoint(ckpt, build_model("micro", num_classes=21), model_spec("micro", 21, 16))
    raw = {"base": {"data_dir": str(tmp_path / "data")}, "model": {"preset": "micro",
                                                                   "output_stride": 8},
           "finetune": {"init_checkpoint": str(ckpt), "include_val": True,
                        "use_bootstrap": False, "init_from_pretrain": False}}
    params = parse_params(raw)
    got = finetune.inputs(params)
    p = StagePaths.of(params)
    assert got.init_checkpoint == ckpt and got.extra_lists == (p.clean_list("val"),)
    assert got.list_file == p.clean_list("train_aug")
    model, spec = make_model(params, got.init_checkpoint)
    assert model.output_stride == 8 and spec["output_stride"] == 8
    raw["finetune"]["init_checkpoint"] = str(tmp_path / "nowhere.pt")
    with pytest.raises(StageError, match=r"finetune.init_checkpoint = '.*nowhere\.pt': file not "
                                         r"found"):
        finetune.inputs(parse_params(raw))


def test_relative_tracking_uri_of_a_dvc_experiment_copy_is_the_projects(tmp_path):
    """MLFLOW_TRACKING_URI=sqlite:///mlflow.db (a relative path, as MLflow's docs write it) in a
    `dvc exp run --temp`/queued copy means the project's store, not one in the copy; in the
    project itself, and for absolute paths and servers, the URI is MLflow's as given."""
    from pipelines.tracking import from_project

    proj = tmp_path / "proj"
    copy = proj / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    where = {"repo": copy, "home": proj}
    assert from_project("sqlite:///mlflow.db", cwd=copy, **where) == f"sqlite:///{proj}/mlflow.db"
    assert from_project("sqlite:///st/m.db", cwd=copy / "data", **where) == \
        f"sqlite:///{proj}/data/st/m.db"
    for uri in ("sqlite:////abs/mlflow.db", "sqlite:///:memory:", "http://127.0.0.1:5000",
                "postgresql://u@h/db", "databricks", "file:///abs/mlruns"):
        assert from_project(uri, cwd=copy, **where) == uri
    assert from_project("sqlite:///mlflow.db", cwd=proj, repo=proj, home=proj) == \
        "sqlite:///mlflow.db"
    assert from_project("sqlite:///mlflow.db", cwd=tmp_path, **where) == "sqlite:///mlflow.db"
