"""Paper recipes in presets/ are valid overlays that name real model presets."""

from pathlib import Path

import pytest
import yaml

from deeplab_core.config import ConfigError, parse_params
from deeplab_core.models import list_presets
from pipelines.use_preset import apply_preset

REPO = Path(__file__).resolve().parents[1]
PRESET_FILES = sorted((REPO / "presets").glob("*.yaml"))


def test_there_is_a_recipe_for_each_paper_version():
    names = {p.stem for p in PRESET_FILES}
    assert {"v1_largefov", "v2_aspp_l_resnet101", "v3_resnet101_os16_mg124",
            "v3plus_xception65"} <= names


@pytest.mark.parametrize("overlay", PRESET_FILES, ids=lambda p: p.stem)
def test_preset_applies_and_validates(overlay, tmp_path):
    out = tmp_path / "params.yaml"
    merged = apply_preset(REPO / "params.yaml", overlay, out)
    params = parse_params(yaml.safe_load(out.read_text()))
    assert params.model.preset == merged["model"]["preset"] == overlay.stem
    assert params.model.preset in list_presets()
    # everything the overlay does not set keeps the default
    assert params.crf_search.w2 == 3


def test_invalid_overlay_is_refused_and_nothing_written(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  batch_size: 1\n")
    out = tmp_path / "params.yaml"
    with pytest.raises(ConfigError, match=r"finetune\.batch_size = 1"):
        apply_preset(REPO / "params.yaml", bad, out)
    assert not out.exists()
