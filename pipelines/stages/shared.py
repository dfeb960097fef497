"""What only the stage flows share: outputs written atomically, required inputs checked with
one message, and the class list prepare wrote."""

from __future__ import annotations

from pathlib import Path

from deeplab_core.config import Params
from deeplab_core.fileio import atomic_directory, atomic_write_json
from pipelines.common import StageError
from pipelines.paths import StagePaths

# Stage outputs are written through the library's atomic helpers: a failed or killed stage never
# leaves a half-written output in place (directories are built aside and swapped in whole).
atomic_dir = atomic_directory
write_json = atomic_write_json


def dataset_classes(params: Params):
    """The class list prepare wrote (data/prepared/classes.json), checked against
    base.num_classes."""
    from deeplab_core.classes import load_class_list

    try:
        return load_class_list(StagePaths.of(params).classes_file, params.base.num_classes)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None


def require_inputs(stage: str, *paths: Path) -> None:
    """Fail with one message naming every missing input and the stage that writes them."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise StageError(f"{stage} needs {', '.join(missing)}; run the stages before it "
                         "(dvc repro)")
