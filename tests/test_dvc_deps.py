"""dvc.yaml lists, for every stage, exactly the in-repo modules the stage imports, directly or
transitively (imports inside functions included): editing any code a stage runs makes DVC re-run
it, and editing code it does not run does not. The imports are derived from the source, so a new
import without a new dep fails here."""

from __future__ import annotations

import json

import pytest
import yaml

from pipelines.paths import stage_io, stages
from pipelines.tools.stage_deps import (REPO, code_deps, expected_deps, imported_modules, is_code_dep,
                                  listed_paths, stage_code, written_paths_off)

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_import_walk_sees_function_level_relative_and_package_imports():
    files = {p.relative_to(REPO).as_posix() for p in stage_code("pipelines.stages.crf_search")}
    # imported inside function bodies of the stage
    assert "deeplab_core/crf/search.py" in files and "deeplab_core/crf/plots.py" in files
    # package initialisers run on import, and the closure reaches the model zoo through the
    # checkpoint loader
    assert "deeplab_core/__init__.py" in files and "pipelines/__init__.py" in files
    assert "deeplab_core/models/deeplab.py" in files
    # what the stage never imports is not in it
    assert "deeplab_core/data/synthetic/writers.py" not in files
    assert "pipelines/ops/prefect_server.py" not in files
    # relative imports resolve against the importing module's package
    assert "deeplab_core.models.layers.BlockTrunk" in imported_modules(
        REPO / "deeplab_core" / "models" / "backbones" / "basicnet.py")
    assert "deeplab_core.models.deeplab" in imported_modules(REPO / "deeplab_core" / "models" / "msc.py")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_yaml_deps_are_exactly_the_stage_imports(stage):
    spec = STAGES[stage]
    listed = [d for d in spec.get("deps", []) if d.split("/")[0] in ("deeplab_core", "pipelines")]
    want = code_deps(spec)
    missing = sorted(set(want) - set(listed))
    extra = sorted(set(listed) - set(want))
    assert not missing, (f"dvc.yaml stage {stage!r} imports these but does not list them: "
                         f"{missing} (python -m pipelines.tools.stage_deps --write)")
    assert not extra, f"dvc.yaml stage {stage!r} lists code it never imports: {extra}"
    assert spec["deps"] == expected_deps(spec)
    for dep in listed:
        assert (REPO / dep).is_file(), dep


def test_paths_module_declares_every_dvc_stage():
    """Every stage of the pipeline (an ablation grid added as a stage by hand aside)."""
    assert stages() == [s for s, spec in STAGES.items() if "pipelines.tools.ablate" not in spec["cmd"]]


def test_a_stage_the_paths_module_does_not_declare_keeps_its_listed_data():
    spec = {"cmd": "python -m pipelines.tools.ablate v3_inference",
            "deps": ["ablations/v3_inference.yaml", "data/prepared"],
            "outs": ["data/ablations/v3_inference"]}
    assert expected_deps(spec, "ablate_inference")[-2:] == spec["deps"]
    assert written_paths_off("ablate_inference", spec) == []


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_yaml_data_paths_are_the_ones_the_stages_use(stage):
    """The data deps, outs, metrics and plots of each dvc.yaml stage are exactly those
    pipelines/paths.py names for it, the paths the stage's code reads and writes."""
    spec = STAGES[stage]
    io = stage_io(stage)
    assert [d for d in spec.get("deps", []) if not is_code_dep(d)] == io["deps"]
    for kind in ("outs", "metrics", "plots"):
        assert listed_paths(spec, kind) == io[kind], (stage, kind)
    assert not written_paths_off(stage, spec)
    assert spec["deps"] == expected_deps(spec, stage)


def test_evaluate_depends_on_the_crf_and_the_models():
    """The gap that left stale results: editing the CRF or the model code re-runs evaluate."""
    deps = STAGES["evaluate"]["deps"]
    assert "deeplab_core/crf/densecrf.py" in deps and "deeplab_core/models/deeplab.py" in deps


def test_changing_the_inference_section_reruns_only_crf_search_evaluate_and_register(tmp_path):
    """Real DVC on a scratch copy of the project whose every stage is recorded in dvc.lock (with
    stand-in data): an edit of params.yaml's `inference` section leaves every training stage up
    to date; `dvc status` names crf_search, evaluate and register alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import scratch_project

    root = scratch_project(tmp_path / "proj")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")

    def run(*args):
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc.stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    for spec in STAGES.values():
        for kind in ("deps", "outs", "metrics", "plots"):
            for path in listed_paths(spec, kind):
                target = root / path
                if target.exists():
                    continue
                if Path(path).suffix:  # a file: its stand-in content
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("{}\n")
                else:
                    (target / "stand-in").parent.mkdir(parents=True, exist_ok=True)
                    (target / "stand-in").write_text(path + "\n")
    run("dvc", "commit", "-f", "-q")
    assert json.loads(run("dvc", "status", "--json")) == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["inference"].update(scales=[0.5, 1.0, 1.5], flip=True, output_stride=8)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(run("dvc", "status", "--json"))
    assert set(changed) == {"crf_search", "evaluate", "register"}, changed
