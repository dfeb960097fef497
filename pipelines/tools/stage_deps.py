"""The code each stage runs, derived from its imports, and the `deps` dvc.yaml lists for it.

A stage is `python -m pipelines.<stage>`; the in-repo files it can import are the transitive
closure of its import statements (those inside functions included, relative imports resolved)
plus the `__init__.py` of every package on the way. dvc.yaml lists exactly those files, so
editing any code a stage runs, and only such code, makes DVC re-run it. Its data deps, outs,
metrics and plots are the ones pipelines.paths declares for the stage (the paths the stage's
code uses); --write rewrites the deps, a difference in what a stage writes is reported.

    python -m pipelines.tools.stage_deps            # check dvc.yaml against the imports (exit 1 if off)
    python -m pipelines.tools.stage_deps --write    # rewrite the code deps in dvc.yaml, comments kept
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from pipelines.common import REPO

PACKAGES = ("deeplab_core", "pipelines")


def module_file(name: str) -> Path | None:
    """The file of an in-repo module or package, or None for anything else."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Names of every module `path` imports anywhere in its body (relative imports resolved);
    `from pkg import name` counts `pkg.name` when that is a module."""
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def stage_code(module: str) -> set[Path]:
    """Every in-repo file that running `python -m <module>` can import: the transitive closure,
    with the `__init__.py` of each package on the way (Python runs them on import)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            f = module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo.extend(imported_modules(f))
    return seen


def stage_module(spec: dict) -> str:
    """The module a dvc.yaml stage runs (`cmd: python -m <module>`)."""
    cmd = spec["cmd"]
    if "python -m " not in cmd:
        raise ValueError(f"stage cmd {cmd!r} is not `python -m <module>`")
    return cmd.split("python -m ", 1)[1].split()[0]


def is_code_dep(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def code_deps(spec: dict) -> list[str]:
    """The in-repo files the stage imports, as sorted repo-relative paths."""
    return sorted(p.relative_to(REPO).as_posix() for p in stage_code(stage_module(spec)))


def expected_deps(spec: dict, stage: str | None = None) -> list[str]:
    """The stage's deps as they should read: its code files, then its data deps (as
    pipelines.paths declares them for `stage`; as listed for a stage it does not declare, such
    as an ablation grid added by hand)."""
    from pipelines.paths import stage_io, stages

    if stage is None or stage not in stages():
        return code_deps(spec) + [d for d in spec.get("deps", []) if not is_code_dep(d)]
    return code_deps(spec) + stage_io(stage)["deps"]


def listed_paths(spec: dict, kind: str) -> list[str]:
    """The paths of a dvc.yaml stage's `kind` entries (outs, metrics, plots), options dropped."""
    return [e if isinstance(e, str) else next(iter(e)) for e in spec.get(kind, [])]


def written_paths_off(stage: str, spec: dict) -> list[str]:
    """The kinds (outs, metrics, plots) whose paths in dvc.yaml differ from pipelines.paths (none
    for a stage it does not declare)."""
    from pipelines.paths import stage_io, stages

    if stage not in stages():
        return []
    io = stage_io(stage)
    return [kind for kind in ("outs", "metrics", "plots") if listed_paths(spec, kind) != io[kind]]


def main(argv: list[str] | None = None) -> int:
    from ruamel.yaml import YAML

    argv = sys.argv[1:] if argv is None else argv
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    path = REPO / "dvc.yaml"
    doc = yaml.load(path.read_text())
    off, outs_off = [], []
    for name, spec in doc["stages"].items():
        outs_off += [f"{name}.{kind}" for kind in written_paths_off(name, spec)]
        want = expected_deps(spec, name)
        if list(spec.get("deps", [])) != want:
            off.append(name)
            if "--write" in argv:
                spec["deps"].clear()
                spec["deps"].extend(want)
    if outs_off:
        print(f"dvc.yaml outs differ from pipelines/paths.py for: {', '.join(outs_off)} "
              "(edit one to match the other)")
    if off and "--write" in argv:
        with open(path, "w") as f:
            yaml.dump(doc, f)
        print(f"rewrote the deps of {', '.join(off)} in {path}")
        return 1 if outs_off else 0
    if off:
        print(f"dvc.yaml deps differ from the imports and pipelines/paths.py for: "
              f"{', '.join(off)} (python -m pipelines.tools.stage_deps --write)")
        return 1
    if outs_off:
        return 1
    print("dvc.yaml deps and outs match the stages' imports and pipelines/paths.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
