"""InferenceProtocol: built from the params section, round-tripped through its file, checked with
one-line errors, and applied by one path (the same probabilities as the engine's functions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_NUM_CLASSES, confident_micro_model
from deeplab_core.config import parse_params
from deeplab_core.crf.densecrf import CRFParams, dense_crf
from deeplab_core.engine.evaluate import predict_probs
from deeplab_core.engine.protocol import InferenceProtocol, ProtocolError
from deeplab_core.engine.tiling import predict_probs_tiled
from deeplab_core.models import unwrap


def test_built_from_the_inference_section_and_round_tripped(tmp_path):
    params = parse_params({"inference": {"scales": [0.5, 1.0], "flip": True,
                                         "output_stride": 8, "tile_size": 64,
                                         "tile_overlap": 16, "precision": "bfloat16"}})
    crf = CRFParams(iterations=3)
    p = InferenceProtocol.from_config(params.inference, crf)
    assert (p.scales, p.flip, p.output_stride, p.tile_size, p.tile_overlap, p.precision,
            p.crf) == ((0.5, 1.0), True, 8, 64, 16, "bfloat16", crf)
    assert p.passes_per_image == 4
    assert InferenceProtocol.from_file(p.save(tmp_path / "protocol.json")) == p
    assert InferenceProtocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    # inference.crf false drops whatever CRF the search found
    off = parse_params({"inference": {"crf": False}}).inference
    assert InferenceProtocol.from_config(off, crf).crf is None
    assert p.with_overrides(crf=None, flip=None).crf is None
    assert p.with_overrides(crf=None, flip=None).flip is True
    assert "scales 0.5, 1; flip on; output stride 8; tiles 64 px" in p.describe()


@pytest.mark.parametrize("fields,message", [
    ({"scales": []}, "scales = []: expected a non-empty list"),
    ({"scales": [1.0, -1]}, "every scale must be > 0"),
    ({"flip": "yes"}, "flip = 'yes': expected true or false"),
    ({"output_stride": 4}, "output_stride = 4: expected one of [8, 16, 32]"),
    ({"tile_size": 32, "tile_overlap": 32}, "tile_overlap = 32: expected 0 <= overlap < tile_size"),
    ({"precision": "int8"}, "precision = 'int8': expected one of"),
    ({"crf": {"w1": -1}}, "crf = {'w1': -1}: CRFParams.w1 must be >= 0"),
    ({"colour": True}, "unknown protocol field(s) ['colour']"),
])
def test_bad_fields_are_one_line_errors(fields, message):
    with pytest.raises(ProtocolError) as exc:
        InferenceProtocol.from_dict(fields)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "protocol.json"
    bad.write_text('{"scales": [1.0], "flip": 3}')
    with pytest.raises(ProtocolError, match=f"{bad}: not an inference protocol: flip = 3"):
        InferenceProtocol.from_file(bad)
    with pytest.raises(FileNotFoundError, match="inference protocol file not found"):
        InferenceProtocol.from_file(tmp_path / "missing.json")


def test_applies_the_engines_inference_and_the_crf():
    torch.manual_seed(0)
    model = confident_micro_model(TINY_NUM_CLASSES)
    x = torch.randn(1, 3, 40, 56)
    p = InferenceProtocol(scales=(0.75, 1.25), flip=True, output_stride=8)
    assert unwrap(p.prepare(model)).output_stride == 8
    torch.testing.assert_close(p.probabilities(model, x), predict_probs(model, x, (0.75, 1.25),
                                                                         True))
    tiled = p.with_overrides(tile_size=32, tile_overlap=8)
    torch.testing.assert_close(tiled.probabilities(model, x),
                               predict_probs_tiled(model, x, 32, 8, (0.75, 1.25), True))
    bf16 = p.with_overrides(precision="bfloat16").probabilities(model, x)
    assert bf16.dtype == torch.float32
    assert (bf16.argmax(1) == p.probabilities(model, x).argmax(1)).float().mean() > 0.9
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    probs = p.probabilities(model, x)[0].numpy()
    labels, q = p.refine(image, probs)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    crf = CRFParams(iterations=2)
    labels, q = p.with_overrides(crf=crf).refine(image, probs)
    np.testing.assert_array_equal(labels, dense_crf(image, probs, crf)[0])
