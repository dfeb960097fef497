"""deeplab-predict: segment your own images with a trained checkpoint or a registered model.

    deeplab-predict --model models:/deeplab@champion --input 'photos/*.jpg' --output masks/
    deeplab-predict --model data/models/finetune/model.pt --input photos/ --output masks/ \\
        --crf --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip --output-stride 8

A registered model (`models:/...`) is applied under the inference protocol it was evaluated and
registered with (scales, flip, output stride, tiles, precision, the CRF when it earned its place):
without flags the masks are those the evaluate stage scored. Each flag given overrides that one
setting. A checkpoint file starts from one scale, no flip, no CRF, tiles of 1024 px.

Images are decoded as every stage decodes them (RGB, EXIF orientation applied), so masks come out
in the orientation viewers show. Writes, per image, <name>.png (palette label image, VOC colours
or those of --classes: pixel values are class ids),
<name>_overlay.jpg (the colours over the photo) and with --save-probs <name>_probs.npy (float16
class probabilities, C x H x W). Images larger than --tile-size on a side are predicted in
overlapping tiles, so memory stays bounded. A file that cannot be read is named on stderr and the
rest are still processed; the exit status is then 1 (2 for a bad model or arguments).

`models:/` URIs are looked up in the project's MLflow registry (mlflow.db at the project root)
or the one MLFLOW_TRACKING_URI names; MLflow is imported only for them."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

PROG = "deeplab-predict"
CHECKPOINT_TILE = 1024
MLFLOW_SCHEMES = ("models:/", "runs:/")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="checkpoint file (model.pt) or an MLflow URI: models:/deeplab@champion")
    ap.add_argument("--input", required=True, help="image file, folder of images, or glob")
    ap.add_argument("--output", required=True, type=Path, help="folder for the outputs")
    ap.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                    help="refine with the dense CRF, or not (default: the model's protocol)")
    ap.add_argument("--crf-params", type=Path, help="CRF parameters JSON (crf_search's "
                    "best_params.json); default: the registered model's, else the papers'")
    ap.add_argument("--scales", type=float, nargs="+", default=None,
                    help="input scales averaged (e.g. 0.5 0.75 1.0 1.25 1.5 1.75; default: the "
                         "model's protocol, else 1.0)")
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                    help="also average horizontal flips (default: the model's protocol)")
    ap.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                    help="output stride at inference (default: the model's protocol, else as "
                         "trained)")
    ap.add_argument("--tile-size", type=int, default=None,
                    help="predict images with a side above this in overlapping tiles of this "
                         f"side (0: never tile; default: the model's protocol, else "
                         f"{CHECKPOINT_TILE})")
    ap.add_argument("--tile-overlap", type=int, default=None,
                    help="pixels shared by neighbours (default: the model's protocol, else 256)")
    ap.add_argument("--precision", choices=("float32", "bfloat16", "float16"),
                    help="numeric precision (default: the model's protocol, else float32)")
    ap.add_argument("--save-probs", action="store_true", help="also write <name>_probs.npy")
    ap.add_argument("--classes", type=Path, help="the dataset's classes.json (e.g. "
                    "data/prepared/classes.json): its palette colours the masks and overlays "
                    "(default: the VOC palette)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.scales is not None and any(s <= 0 for s in a.scales):
        ap.error(f"--scales: every scale must be > 0, got {a.scales}")
    overlap = 256 if a.tile_overlap is None else a.tile_overlap
    if (a.tile_size is not None and a.tile_size < 0) or overlap < 0 or (
            a.tile_size and not overlap < a.tile_size):
        ap.error(f"--tile-size {a.tile_size} / --tile-overlap {a.tile_overlap}: expected a "
                 f"size >= 0 and 0 <= overlap < size")
    return a


def load_registered(uri: str):
    """(network, searched CRFParams or None, InferenceProtocol) of an MLflow pyfunc model logged
    by the register stage (pipelines.ops.serving.DeepLabPyfunc)."""
    import mlflow.pyfunc

    from pipelines import tracking
    from pipelines.common import StageError
    from pipelines.ops.registry import require_server

    try:
        require_server()
    except StageError as err:
        raise ValueError(f"cannot load {uri!r}: {err}") from err
    mlflow.set_tracking_uri(tracking.tracking_uri())
    # The project store keeps artifact paths relative to the project root.
    where = tracking.REPO if tracking.project_store() else Path.cwd()
    try:
        with contextlib.chdir(where):
            loaded = mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as err:
        first = (str(err).splitlines() or [""])[0]
        raise ValueError(f"cannot load {uri!r} from the MLflow store {tracking.tracking_uri()}: "
                         f"{first}") from err
    python_model = loaded.unwrap_python_model()
    segmenter = getattr(python_model, "segmenter", None)
    if segmenter is None:
        raise ValueError(f"{uri!r} is not a DeepLab model logged by the register stage")
    protocol = segmenter.protocol
    return segmenter.model, getattr(python_model, "searched_crf", None) or protocol.crf, protocol


def load_model(a: argparse.Namespace):
    """(network, the CRFParams --crf would apply or None, the model's InferenceProtocol) from
    --model and --crf-params."""
    from deeplab_core.crf.densecrf import CRFParams
    from deeplab_core.engine.checkpoint import load_checkpoint
    from deeplab_core.engine.protocol import InferenceProtocol

    if a.model.startswith(MLFLOW_SCHEMES):
        model, crf, protocol = load_registered(a.model)
    else:
        model, crf = load_checkpoint(Path(a.model))[0], None
        protocol = InferenceProtocol(tile_size=CHECKPOINT_TILE)
    if a.crf_params is not None:
        if not a.crf_params.is_file():
            raise FileNotFoundError(f"--crf-params: file not found: {str(a.crf_params)!r}")
        try:
            crf = CRFParams.from_file(a.crf_params)
        except ValueError as err:
            raise ValueError(f"--crf-params: {err}") from err
    if a.crf and crf is None:
        crf = CRFParams()
        print(f"{PROG}: no CRF parameters with the model; using the defaults {crf.to_dict()}",
              file=sys.stderr)
    return model, crf, protocol


def protocol_of(a: argparse.Namespace, protocol, crf):
    """The model's protocol with every flag given applied over it (--crf: ``crf``)."""
    changes = {"scales": tuple(a.scales) if a.scales else None, "flip": a.flip,
               "precision": a.precision, "tile_overlap": a.tile_overlap}
    if a.output_stride:
        changes["output_stride"] = a.output_stride
    if a.tile_size is not None:
        changes["tile_size"] = a.tile_size or None
    if a.crf is not None:
        changes["crf"] = crf if a.crf else None
    elif a.crf_params is not None and protocol.crf is not None:
        changes["crf"] = crf
    return protocol.with_overrides(**changes)


def build_segmenter(a: argparse.Namespace):
    from deeplab_core.engine.infer import Segmenter
    from deeplab_core.runtime import resolve_device

    model, crf, protocol = load_model(a)
    return Segmenter(model, protocol=protocol_of(a, protocol, crf),
                     device=resolve_device(a.device))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from deeplab_core.predict import find_inputs, predict_files

    try:
        files = find_inputs(a.input)
        palette = None
        if a.classes is not None:
            from deeplab_core.classes import load_class_list

            palette = load_class_list(a.classes).full_palette()
        segmenter = build_segmenter(a)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR [{PROG}]: {err}", file=sys.stderr)
        return 2

    def on_error(path: Path, reason: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"ERROR [{PROG}]: {reason}", file=sys.stderr)  # on its own line, bar or not

    summary = predict_files(segmenter, files, a.output, use_crf=True, save_probs=a.save_probs,
                            progress=not a.no_progress, on_error=on_error, palette=palette)
    what = "label PNGs, overlays" + (", probabilities" if a.save_probs else "")
    print(f"{PROG}: {len(summary.written)} of {len(files)} images segmented into "
          f"{a.output} ({what})" + (f"; {len(summary.failed)} failed:" if summary.failed else ""))
    for path, _ in summary.failed:
        print(f"  {path}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
