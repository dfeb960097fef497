"""The prediction command end to end: the CLI run as a module and through its console-script
entry function on a tiny checkpoint made here; tiled against untiled inference; read-only images;
a model loaded from a real local MLflow registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_core.classes import voc_palette
from deeplab_core.crf.densecrf import CRFParams
from deeplab_core.engine.checkpoint import model_spec, save_checkpoint
from deeplab_core.engine.infer import Segmenter
from deeplab_core.engine.tiling import predict_probs_tiled, tile_starts
from deeplab_core.predict import find_inputs, output_names
from pipelines.tools import predict as cli
from tests.conftest import REPO, confident_micro_model, tiny_sample

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    spec = model_spec("micro", NUM_CLASSES, 16)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, confident_micro_model(NUM_CLASSES), spec)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two JPEGs and a PNG of different sizes, a corrupt JPEG and a text file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (40, 56), "b.jpg": (33, 47), "c.png": (24, 80)}.items():
        Image.fromarray(tiny_sample(rng, h, w)[0]).save(folder / name)
    (folder / "broken.jpg").write_bytes((folder / "a.jpg").read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    return folder


def _check_outputs(out: Path, name: str, hw: tuple[int, int], probs: bool = False) -> None:
    label = Image.open(out / f"{name}.png")
    assert label.mode == "P" and label.size == (hw[1], hw[0])
    pal = np.array(label.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(pal[:NUM_CLASSES], voc_palette()[:NUM_CLASSES])
    assert int(np.asarray(label).max()) < NUM_CLASSES
    ov = Image.open(out / f"{name}_overlay.jpg")
    assert ov.mode == "RGB" and ov.size == (hw[1], hw[0])
    if probs:
        p = np.load(out / f"{name}_probs.npy")
        assert p.dtype == np.float16 and p.shape == (NUM_CLASSES, *hw)
        np.testing.assert_allclose(p.astype(np.float32).sum(0), 1.0, atol=5e-3)
        np.testing.assert_array_equal(p.astype(np.float32).argmax(0)[p.max(0) > 0.6],
                                      np.asarray(label)[p.max(0) > 0.6])
    else:
        assert not (out / f"{name}_probs.npy").exists()


def test_module_cli_segments_a_folder_and_names_the_unreadable_file(checkpoint, photos,
                                                                    tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipelines.tools.predict", "--model", str(checkpoint),
                           "--input", str(photos), "--output", str(out), "--crf",
                           "--save-probs"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "broken.jpg" in proc.stderr and "cannot read image file" in proc.stderr
    assert "3 of 4 images segmented" in proc.stdout
    assert "notes" not in proc.stdout + proc.stderr  # not an image suffix: not an input
    for name, hw in {"a": (40, 56), "b": (33, 47), "c": (24, 80)}.items():
        _check_outputs(out, name, hw, probs=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{s}" for n in "abc" for s in (".png", "_overlay.jpg", "_probs.npy"))


def test_entry_function_with_glob_scales_flip_and_output_stride(checkpoint, photos, tmp_path,
                                                                capsys):
    out = tmp_path / "out"
    rc = cli.main(["--model", str(checkpoint), "--input", str(photos / "*.jpg"), "--output",
                   str(out), "--scales", "0.75", "1.0", "1.25", "--flip", "--output-stride", "8",
                   "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "broken.jpg" in captured.err
    _check_outputs(out, "a", (40, 56))
    _check_outputs(out, "b", (33, 47))
    assert not (out / "c.png").exists()  # a PNG: the glob names JPEGs only


def test_console_script_is_declared():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["deeplab-predict"] == "pipelines.tools.predict:main"


@pytest.mark.parametrize("argv,message", [
    (["--input", "nowhere/*.jpg"], "matches no file"),
    (["--input", "missing_dir"], "is not a file, a folder or a glob"),
    (["--model", "missing.pt"], "model checkpoint not found: missing.pt"),
])
def test_bad_model_or_input_is_one_clear_error(checkpoint, photos, tmp_path, capsys, argv,
                                                message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {"--model": str(checkpoint), "--input": str(photos), "--output": "out"}
    args.update(dict(zip(argv[::2], argv[1::2])))
    rc = cli.main([x for kv in args.items() for x in kv] + ["--no-progress"])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_crf_params_file_is_read_by_the_one_reader(checkpoint, photos, tmp_path, capsys,
                                                   monkeypatch):
    """--crf-params goes through CRFParams.from_file: crf_search's best_params.json or a bare
    mapping; a file that holds no CRF parameters is one clear error naming it."""
    monkeypatch.chdir(tmp_path)
    base = ["--model", str(checkpoint), "--input", str(photos / "a.jpg"), "--no-progress"]
    (tmp_path / "bad.json").write_text('{"params": {"iterations": 0}}')
    rc = cli.main(base + ["--output", "o1", "--crf", "--crf-params", "bad.json"])
    err = capsys.readouterr().err
    assert rc == 2 and "--crf-params: bad.json does not hold CRF parameters" in err, err
    assert not (tmp_path / "o1").exists()
    (tmp_path / "bare.json").write_text('{"iterations": 2, "w1": 4}')
    args = cli.parse_args(base + ["--output", "o2", "--crf-params", "bare.json"])
    assert cli.load_model(args)[1] == CRFParams(iterations=2, w1=4.0)


def test_output_names_stay_distinct(tmp_path):
    files = [tmp_path / "x" / "p.jpg", tmp_path / "x" / "p.png", tmp_path / "y" / "p.jpg",
             tmp_path / "y" / "q.jpg"]
    names = output_names(files)
    assert len(set(names.values())) == 4 and names[files[3]] == "q"
    with pytest.raises(FileNotFoundError, match="no image files"):
        (tmp_path / "empty").mkdir()
        find_inputs(tmp_path / "empty")


@pytest.mark.parametrize("size,tile,overlap,expected", [
    (100, 100, 10, [0]), (80, 100, 10, [0]), (250, 100, 20, [0, 80, 150]),
    (200, 100, 0, [0, 100])])
def test_tile_starts_cover_the_image(size, tile, overlap, expected):
    assert tile_starts(size, tile, overlap) == expected


def _local_model() -> torch.nn.Module:
    """A network whose output at a pixel depends on a 5x5 neighbourhood only (no global
    pooling): away from a tile's edges a tile sees exactly what the whole image shows."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, NUM_CLASSES, 3, padding=1))
    with torch.no_grad():
        net[2].weight.mul_(20)  # confident predictions, so argmax agreement means something
    return net.eval()


def _image_tensor(seed: int, h: int, w: int) -> torch.Tensor:
    image, _ = tiny_sample(np.random.default_rng(seed), h, w)
    return torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0) / 64.0


@pytest.mark.parametrize("tile,overlap", [(64, 32), (48, 16), (100, 40)])
def test_tiled_prediction_agrees_with_whole_image(tile, overlap):
    from deeplab_core.engine.evaluate import predict_probs

    model = _local_model()
    x = _image_tensor(3, 96, 170)
    whole = predict_probs(model, x, scales=(1.0,), flip=True)
    assert whole.max(1).values.mean() > 0.6
    tiled = predict_probs_tiled(model, x, tile_size=tile, overlap=overlap, flip=True)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled.sum(1), torch.ones(1, 96, 170))
    assert (tiled - whole).abs().mean().item() < 0.01
    assert (tiled.argmax(1) == whole.argmax(1)).float().mean().item() > 0.99
    # no tiling needed: the very same numbers as the whole-image path
    torch.testing.assert_close(predict_probs_tiled(model, x, 170, overlap, flip=True), whole)


def test_tile_weights_leave_no_seam():
    """A network predicting the same for every pixel gives the same after blending."""
    class Const(torch.nn.Module):
        def forward(self, x):
            logits = torch.tensor([1.0, 2.0, 0.5, -1.0]).view(1, 4, 1, 1)
            return logits.expand(x.shape[0], 4, x.shape[2], x.shape[3])

    x = torch.zeros(2, 3, 90, 130)
    out = predict_probs_tiled(Const(), x, tile_size=40, overlap=12)
    expected = torch.softmax(torch.tensor([1.0, 2.0, 0.5, -1.0]), 0).view(1, 4, 1, 1)
    torch.testing.assert_close(out, expected.expand(2, 4, 90, 130))


def test_segmenter_tiles_large_images_and_takes_read_only_arrays(checkpoint):
    from deeplab_core.engine.checkpoint import load_checkpoint

    image, _ = tiny_sample(np.random.default_rng(4), 70, 150)
    ro = np.asarray(Image.fromarray(image))
    assert not ro.flags.writeable
    local = _local_model()
    whole = Segmenter(local).predict(ro, use_crf=False)
    tiled = Segmenter(local, tile_size=64, tile_overlap=24).predict(ro, use_crf=False)
    assert tiled[0].shape == (70, 150) and tiled[1].shape == (NUM_CLASSES, 70, 150)
    assert (tiled[0] == whole[0]).mean() > 0.99
    model, _ = load_checkpoint(checkpoint)  # DeepLab (image pooling sees each tile apart)
    whole = Segmenter(model).predict(ro, use_crf=False)
    tiled = Segmenter(model, tile_size=64, tile_overlap=24).predict(ro, use_crf=False)
    assert (tiled[0] == whole[0]).mean() > 0.95
    assert np.abs(tiled[1] - whole[1]).mean() < 0.1
    crf = Segmenter(model, CRFParams(iterations=2), tile_size=64, tile_overlap=24)
    mask, q = crf.predict(ro, use_crf=True)
    assert mask.shape == (70, 150) and np.allclose(q.sum(0), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="tile_overlap 64"):
        Segmenter(model, tile_size=64, tile_overlap=64)
    with pytest.raises(TypeError, match="expected CRFParams or None, got dict"):
        Segmenter(model, {"iterations": 2})


def test_read_only_images_across_the_library():
    from deeplab_core.crf.densecrf import dense_crf
    from deeplab_core.data.transforms import eval_transform, normalize, train_transform
    from deeplab_core.metrics import confusion_matrix, trimap_confusions
    from deeplab_core.viz import colorize, overlay

    image, label = tiny_sample(np.random.default_rng(5), 24, 32)
    ro_img, ro_lab = np.asarray(Image.fromarray(image)), np.asarray(Image.fromarray(label))
    assert not ro_img.flags.writeable and not ro_lab.flags.writeable
    np.testing.assert_array_equal(normalize(ro_img).numpy(), normalize(image).numpy())
    out = eval_transform()(ro_img, ro_lab)
    assert tuple(out[0].shape) == (3, 24, 32)
    crop, crop_label = train_transform(16)(ro_img, ro_lab, rng=0)
    assert tuple(crop.shape) == (3, 16, 16) and tuple(crop_label.shape) == (16, 16)
    probs = np.full((NUM_CLASSES, 24, 32), 1 / NUM_CLASSES, dtype=np.float32)
    assert dense_crf(ro_img, probs, CRFParams(iterations=1))[0].shape == (24, 32)
    assert confusion_matrix(ro_lab, ro_lab, NUM_CLASSES).trace() == 24 * 32
    assert trimap_confusions(ro_lab, ro_lab, NUM_CLASSES, [2]).shape == (1, 4, 4)
    assert colorize(ro_lab).shape == (24, 32, 3)
    blended = overlay(ro_img, ro_lab)
    bg = label == 0
    np.testing.assert_array_equal(blended[bg], image[bg])
    assert not np.array_equal(blended[~bg], image[~bg])


def test_registered_model_is_loaded_from_a_local_mlflow_registry(checkpoint, photos, tmp_path,
                                                                 monkeypatch, capsys):
    """The real pyfunc model of the register stage, logged and aliased in a scratch store, then
    `--model models:/deeplab-test@champion`: its network and its CRF parameters are used."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from pipelines.ops.serving import log_pyfunc_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    crf_file = tmp_path / "best_params.json"
    crf_file.write_text(json.dumps({"params": {"iterations": 3, "w1": 5.0}}))
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "predict-test", artifact_location=(tmp_path / "artifacts").as_uri()))
    with mlflow.start_run():
        info = log_pyfunc_model(checkpoint, crf_file, "deeplab-test")
    MlflowClient(uri).set_registered_model_alias("deeplab-test", "champion",
                                                 info.registered_model_version)
    model, crf, _ = cli.load_registered("models:/deeplab-test@champion")
    # the file's values, completed with the defaults of the keys it leaves out
    assert crf == CRFParams(iterations=3, w1=5.0)
    expected = torch.load(checkpoint, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k])

    rc = cli.main(["--model", "models:/deeplab-test@champion", "--input", str(photos / "a.jpg"),
                   "--output", "out", "--crf", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    _check_outputs(tmp_path / "out", "a", (40, 56))
    rc = cli.main(["--model", "models:/deeplab-test@nobody", "--input", str(photos / "a.jpg"),
                   "--output", "out2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot load 'models:/deeplab-test@nobody'" in err and uri in err


def test_registered_model_on_a_server_that_does_not_answer_is_one_line(photos, tmp_path,
                                                                       monkeypatch, capsys):
    from pipelines.ops.procs import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["--model", "models:/deeplab@champion", "--input", str(photos / "a.jpg"),
                   "--output", "out", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"ERROR [deeplab-predict]: cannot load 'models:/deeplab@champion': "
                          f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not accept "
                          "connections: Connection refused"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("hw", [(1, 1), (3, 7), (17, 150), (65, 64)])
def test_images_of_any_size_with_scales_flip_and_tiles(checkpoint, hw):
    from deeplab_core.engine.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    seg = Segmenter(model, CRFParams(iterations=2), scales=(0.5, 1.0, 1.75), flip=True,
                    tile_size=64, tile_overlap=16)
    image, _ = tiny_sample(np.random.default_rng(7), max(hw[0], 8), max(hw[1], 8))
    mask, probs = seg.predict(np.ascontiguousarray(image[: hw[0], : hw[1]]))
    assert mask.shape == hw and probs.shape == (NUM_CLASSES, *hw)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-3)


def test_exif_rotated_photo_is_predicted_as_displayed_in_the_dataset_palette(checkpoint,
                                                                             tmp_path):
    """A phone photo stored sideways (EXIF Orientation 6) gets a mask of its displayed size, the
    same mask as the upright photo; --classes colours masks and overlays with its palette."""
    from realformat import smooth_image, write_exif_jpeg

    shown = smooth_image(7, 40, 56)
    folder = tmp_path / "in"
    write_exif_jpeg(folder / "sideways.jpg", shown, 6)
    write_exif_jpeg(folder / "upright.jpg", shown, 1)
    classes = tmp_path / "classes.json"
    colours = [[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]]
    classes.write_text(json.dumps({"names": ["bg", "a", "b", "c"], "palette": colours}))
    out = tmp_path / "out"
    assert cli.main(["--model", str(checkpoint), "--input", str(folder), "--output", str(out),
                     "--classes", str(classes), "--no-progress"]) == 0
    masks = {}
    for name in ("sideways", "upright"):
        label = Image.open(out / f"{name}.png")
        assert label.size == (56, 40)
        pal = np.array(label.getpalette()[:12], dtype=np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(pal, np.array(colours, dtype=np.uint8))
        masks[name] = np.asarray(label)
    assert (masks["sideways"] == masks["upright"]).mean() > 0.95
