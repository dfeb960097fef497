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


# The papers' schedules, number for number (finetune section after the overlay).
PAPER_SCHEDULES = {
    "v1_largefov": dict(batch_size=20, lr=0.001, lr_policy="step", lr_step_size=2000,
                        lr_gamma=0.1, iterations=6000, momentum=0.9, weight_decay=0.0005,
                        head_lr_mult=10.0, head_lr_scope="classifier", bias_lr_mult=2.0,
                        bias_weight_decay=False, loss_at="score_map", optimizer="sgd"),
    "v2_aspp_l_resnet101": dict(batch_size=10, accumulate_steps=2, lr=0.00025, lr_policy="poly",
                                poly_power=0.9, iterations=20000, crop_size=321, momentum=0.9,
                                weight_decay=0.0005, batch_norm="frozen", head_lr_mult=10.0,
                                loss_at="score_map", scale_min=0.5, scale_max=1.5),
    "v3_resnet101_os16_mg124": dict(batch_size=16, lr=0.007, lr_policy="poly", poly_power=0.9,
                                    iterations=30000, crop_size=513, batch_norm="finetune",
                                    bn_momentum=0.0003, loss_at="input", scale_min=0.5,
                                    scale_max=2.0, head_lr_mult=1.0),
    "v3plus_xception65": dict(batch_size=16, lr=0.007, iterations=30000, crop_size=513,
                              batch_norm="finetune", bn_momentum=0.0003, loss_at="input"),
}
PAPER_FIGURES = {"v1_largefov": ["62.25", "67.64"], "v2_aspp_l_resnet101": ["76.35", "77.69"],
                 "v3_resnet101_os16_mg124": ["77.21", "79.77"], "v3plus_xception65": ["79.17"]}


@pytest.mark.parametrize("name", sorted(PAPER_SCHEDULES))
def test_preset_carries_the_papers_schedule(name, tmp_path):
    out = tmp_path / "params.yaml"
    apply_preset(REPO / "params.yaml", REPO / "presets" / f"{name}.yaml", out)
    ft = parse_params(yaml.safe_load(out.read_text())).finetune
    assert {k: getattr(ft, k) for k in PAPER_SCHEDULES[name]} == PAPER_SCHEDULES[name]


def test_list_shows_each_preset_whole_with_the_papers_figures(capsys):
    from pipelines.use_preset import main

    main(["--list"])
    out = capsys.readouterr().out
    blocks = {b.splitlines()[0]: b for b in out.strip().split("\n\n")}
    assert sorted(blocks) == [p.stem for p in PRESET_FILES]
    for name, figures in PAPER_FIGURES.items():
        for fig in figures:
            assert f"{fig} %" in blocks[name], (name, fig)
        assert "Schedule" in blocks[name]
    # the whole header, not only its first line
    header = [ln for ln in (REPO / "presets" / "v1_largefov.yaml").read_text().splitlines()
              if ln.startswith("#")]
    assert len(blocks["v1_largefov"].splitlines()) == 1 + len(header)
