"""Apply a paper recipe (an overlay in presets/) to params.yaml, validating the result first.

A preset may start with `_base_: [file, ...]`: shared overlays (presets/_base_/, e.g. the real
data roots or the papers' SGD block), relative to the preset, stacked in order under its own lines.

  python -m pipelines.tools.use_preset presets/v3plus_xception65.yaml [--out params.yaml]
  python -m pipelines.tools.use_preset --list     # every preset with its paper figures and schedule
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from deeplab_core.config import ConfigError, merge_overlay, parse_params, read_overlay
from deeplab_core.fileio import atomic_write_text
from pipelines.common import REPO

PRESETS_DIR = REPO / "presets"


def apply_preset(base_file: Path, overlay_file: Path, out_file: Path) -> dict:
    base = yaml.safe_load(base_file.read_text()) or {}
    merged = merge_overlay(base, read_overlay(overlay_file))
    parse_params(merged, f"{base_file} + {overlay_file}")  # refuse to write an invalid file
    atomic_write_text(out_file, f"# {overlay_file.name} applied over {base_file.name}\n"
                      + yaml.safe_dump(merged, sort_keys=False))
    return merged


def preset_header(path: Path) -> list[str]:
    """The comment block at the top of a preset: what it is, the paper's figures, its schedule."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def list_presets() -> str:
    """Every preset with its whole header, one block each."""
    blocks = []
    for p in sorted(PRESETS_DIR.glob("*.yaml")):
        blocks.append("\n".join([p.stem] + [f"    {ln}" for ln in preset_header(p)]))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.tools.use_preset", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", nargs="?", help="overlay file or preset name (e.g. v1_largefov)")
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="base params file")
    ap.add_argument("--out", default=None, help="output file (default: overwrite --params)")
    ap.add_argument("--list", action="store_true", help="list the presets")
    a = ap.parse_args(argv)
    if a.list or not a.preset:
        print(list_presets())
        return
    overlay = Path(a.preset)
    if not overlay.is_file():
        overlay = PRESETS_DIR / f"{a.preset}.yaml"
    if not overlay.is_file():
        print(f"ERROR: preset {a.preset!r} not found (expected a file or one of "
              f"{sorted(p.stem for p in PRESETS_DIR.glob('*.yaml'))})", file=sys.stderr)
        sys.exit(2)
    out = Path(a.out or a.params)
    try:
        apply_preset(Path(a.params), overlay, out)
    except ConfigError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out} ({overlay.stem} over {Path(a.params).name}); run `dvc repro`")


if __name__ == "__main__":
    main()
