"""The layering docs/architecture.md draws, held to the code: module imports (those inside
functions included) form no cycle, and every import runs downwards."""

from __future__ import annotations

import functools

import pytest

from pipelines.tools.stage_deps import REPO, _module_name, imported_modules, module_file

# Library floors: a module imports only from its own package or a lower floor; packages on the
# same floor do not import each other.
LIBRARY_FLOORS = (
    ("deeplab_core.classes", "deeplab_core.fileio", "deeplab_core.runtime"),
    ("deeplab_core.config", "deeplab_core.metrics", "deeplab_core.viz"),
    ("deeplab_core.data", "deeplab_core.models", "deeplab_core.crf"),
    ("deeplab_core.engine",),
    ("deeplab_core.predict",),
)
# The pipeline layer: what each part may import from `pipelines` (besides itself).
PIPELINE_ALLOWED = {
    "pipelines.common": (),
    "pipelines.paths": ("pipelines.common",),
    "pipelines.tracking": ("pipelines.common",),
    # any other operation: the floor and the local process helpers
    "pipelines.ops": ("pipelines.common", "pipelines.paths", "pipelines.tracking",
                      "pipelines.ops.procs", "pipelines.ops.prefect_server",
                      "pipelines.ops.mlflow_ui"),
    # services the stages call
    "pipelines.ops.registry": ("pipelines.common", "pipelines.paths", "pipelines.tracking"),
    "pipelines.ops.serving": ("pipelines.common", "pipelines.paths", "pipelines.tracking",
                              "pipelines.ops.procs"),
    "pipelines.ops.procs": ("pipelines.common",),
    "pipelines.ops.prefect_server": ("pipelines.common", "pipelines.ops.procs"),
    "pipelines.stages": ("pipelines.common", "pipelines.paths", "pipelines.tracking",
                         "pipelines.ops.registry", "pipelines.ops.serving",
                         "pipelines.ops.procs"),
    # orchestration runs the stages through DVC (subprocesses), never by import
    "pipelines.ops.repro": ("pipelines.common", "pipelines.paths", "pipelines.tracking",
                            "pipelines.ops.prefect_server", "pipelines.ops.procs"),
    "pipelines.ops.retrain": ("pipelines.common", "pipelines.paths", "pipelines.tracking",
                              "pipelines.ops.repro", "pipelines.ops.registry",
                              "pipelines.ops.prefect_server", "pipelines.ops.procs"),
    "pipelines.tools": ("pipelines.common", "pipelines.paths", "pipelines.tracking",
                        "pipelines.stages", "pipelines.ops"),
}
TRACKING_PACKAGES = ("dvc", "dvc_data", "dvc_objects", "mlflow", "prefect", "great_expectations")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """In-repo module -> the in-repo modules it imports (the package itself excluded)."""
    graph = {}
    for f in sorted(REPO.glob("deeplab_core/**/*.py")) + sorted(REPO.glob("pipelines/**/*.py")):
        name = _module_name(f)
        deps = {_module_name(m) for m in map(module_file, imported_modules(f)) if m is not None}
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")
                       and d not in ("deeplab_core", "pipelines")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _floor(module: str) -> tuple[int, str] | None:
    for i, floor in enumerate(LIBRARY_FLOORS):
        for pkg in floor:
            if _within(module, pkg):
                return i, pkg
    return None


def test_library_imports_run_down_its_floors():
    wrong = []
    for module, deps in import_graph().items():
        if not module.startswith("deeplab_core."):
            continue
        here = _floor(module)
        assert here is not None, f"{module} is on no floor of LIBRARY_FLOORS"
        for dep in deps:
            if dep.startswith("pipelines"):
                wrong.append((module, dep))
                continue
            there = _floor(dep)
            assert there is not None, f"{dep} is on no floor of LIBRARY_FLOORS"
            if there[1] != here[1] and there[0] >= here[0]:
                wrong.append((module, dep))
    assert wrong == []


def test_library_imports_no_tracking_or_orchestration():
    wrong = []
    for f in REPO.glob("deeplab_core/**/*.py"):
        for name in imported_modules(f):
            if name.split(".")[0] in TRACKING_PACKAGES:
                wrong.append((f.relative_to(REPO).as_posix(), name))
    assert wrong == []


def _allowed(module: str) -> tuple[str, ...] | None:
    """The rule of the most specific PIPELINE_ALLOWED entry that covers `module`."""
    best = max((p for p in PIPELINE_ALLOWED if _within(module, p)), key=len, default=None)
    return None if best is None else (best, *PIPELINE_ALLOWED[best])


@pytest.mark.parametrize("part", sorted(PIPELINE_ALLOWED))
def test_pipeline_imports_follow_the_layers(part):
    wrong = []
    for module, deps in import_graph().items():
        rule = _allowed(module)
        if rule is None or rule[0] != part:
            continue
        for dep in deps:
            if dep.startswith("pipelines.") and not any(_within(dep, ok) for ok in rule):
                wrong.append((module, dep))
    assert wrong == []


def test_every_pipeline_module_has_a_rule():
    assert [m for m in import_graph() if m.startswith("pipelines.") and _allowed(m) is None] == []
