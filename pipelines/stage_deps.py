"""The code each stage runs, derived from its imports, and the `deps` dvc.yaml lists for it.

A stage is `python -m pipelines.<stage>`; the in-repo files it can import are the transitive
closure of its import statements (those inside functions included, relative imports resolved)
plus the `__init__.py` of every package on the way. dvc.yaml lists exactly those files, so
editing any code a stage runs, and only such code, makes DVC re-run it.

    python -m pipelines.stage_deps            # check dvc.yaml against the imports (exit 1 if off)
    python -m pipelines.stage_deps --write    # rewrite the code deps in dvc.yaml, comments kept
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


def expected_deps(spec: dict) -> list[str]:
    """The stage's deps as they should read: its code files, then its other deps (data) as
    listed."""
    return code_deps(spec) + [d for d in spec.get("deps", []) if not is_code_dep(d)]


def main(argv: list[str] | None = None) -> int:
    from ruamel.yaml import YAML

    argv = sys.argv[1:] if argv is None else argv
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    path = REPO / "dvc.yaml"
    doc = yaml.load(path.read_text())
    off = []
    for name, spec in doc["stages"].items():
        want = expected_deps(spec)
        if list(spec.get("deps", [])) != want:
            off.append(name)
            if "--write" in argv:
                spec["deps"].clear()
                spec["deps"].extend(want)
    if off and "--write" in argv:
        with open(path, "w") as f:
            yaml.dump(doc, f)
        print(f"rewrote the code deps of {', '.join(off)} in {path}")
        return 0
    if off:
        print(f"dvc.yaml code deps differ from the imports for: {', '.join(off)} "
              "(python -m pipelines.stage_deps --write)")
        return 1
    print("dvc.yaml code deps match the stages' imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
