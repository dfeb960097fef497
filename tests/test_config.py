"""params.yaml schema: defaults, unknown keys, out-of-range values, overlays, deep_merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deeplab_core.config import (ConfigError, Params, deep_merge, load_params, merge_shared_train,
                                 parse_params, read_overlay)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def _normalise(v):
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if isinstance(v, dict):
        return {k: _normalise(x) for k, x in v.items()}
    return v


def _config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_params(raw, "params-under-test.yaml")
    return str(exc.value)


def test_project_params_validate_and_keep_every_value():
    params = load_params(PARAMS)
    assert isinstance(params, Params)
    raw = merge_shared_train(yaml.safe_load(PARAMS.read_text()))
    dumped = params.model_dump(by_alias=True)
    assert set(raw) <= set(dumped)
    for section, values in raw.items():
        for key, value in values.items():
            got = dumped[section][key]
            if isinstance(value, dict) and isinstance(got, dict):
                for k, v in value.items():
                    assert _normalise(got[k]) == _normalise(v), f"{section}.{key}.{k}"
            else:
                assert _normalise(got) == _normalise(value), f"{section}.{key}"


def test_params_yaml_crf_grid_is_the_library_default():
    """params.yaml spells the CRF grid for DVC; it must stay the library's one default."""
    from deeplab_core.config import CRFSearchConfig
    from deeplab_core import config as grid

    raw = yaml.safe_load(PARAMS.read_text())["crf_search"]
    assert tuple(float(v) for v in raw["w1_grid"]) == grid.PAPER_W1_GRID
    assert tuple(float(v) for v in raw["sigma_alpha_grid"]) == grid.PAPER_SIGMA_ALPHA_GRID
    assert tuple(float(v) for v in raw["sigma_beta_grid"]) == grid.PAPER_SIGMA_BETA_GRID
    assert (raw["w2"], raw["sigma_gamma"], raw["iterations"]) == (
        grid.PAPER_W2, grid.PAPER_SIGMA_GAMMA, grid.PAPER_ITERATIONS)
    default = CRFSearchConfig()
    assert (default.w1_grid, default.sigma_alpha_grid, default.sigma_beta_grid) == (
        grid.PAPER_W1_GRID, grid.PAPER_SIGMA_ALPHA_GRID, grid.PAPER_SIGMA_BETA_GRID)
    assert (default.w2, default.sigma_gamma, default.iterations) == (
        grid.PAPER_W2, grid.PAPER_SIGMA_GAMMA, grid.PAPER_ITERATIONS)


def test_aliased_sections_are_read_from_their_yaml_names():
    params = parse_params({"validate": {"min_side": 20}, "register": {"metric": "miou"}})
    assert params.validate_.min_side == 20
    assert params.register_.metric == "miou"


def test_empty_mapping_gives_schema_defaults():
    params = parse_params({})
    assert params.finetune.batch_size == 8
    assert params.model.output_stride == 16
    assert params.prepare.source == "synthetic"


def test_unknown_key_is_named():
    msg = _config_error({"finetune": {"learning_rate": 0.1}})
    assert "finetune.learning_rate" in msg
    assert "unknown key" in msg
    assert "params-under-test.yaml" in msg


def test_unknown_section_is_named():
    msg = _config_error({"finetuning": {"lr": 0.1}})
    assert "finetuning: unknown key" in msg


def test_every_problem_is_listed():
    msg = _config_error({"finetune": {"batch_size": 1, "learning_rate": 0.1}})
    assert "finetune.batch_size = 1" in msg
    assert "finetune.learning_rate: unknown key" in msg


@pytest.mark.parametrize("raw, path_and_value, detail", [
    ({"finetune": {"batch_size": 1}}, "finetune.batch_size = 1", "greater than or equal to 2"),
    ({"model": {"output_stride": 12}}, "model.output_stride = 12", "not supported"),
    ({"inference": {"output_stride": 4}}, "inference.output_stride = 4", "not supported"),
    ({"inference": {"scales": [1.0, 0]}}, "inference.scales = [1.0, 0]", "> 0"),
    ({"model": {"eval_output_stride": 8}}, "model.eval_output_stride", "moved to inference.output_stride"),
    ({"crf_search": {"w1_grid": []}}, "crf_search.w1_grid = []", "non-empty"),
    ({"crf_search": {"sigma_beta_grid": [3, -1]}}, "crf_search.sigma_beta_grid = [3, -1]",
     "positive"),
    ({"bootstrap": {"hard_classes": ["bike"]}}, "bootstrap.hard_classes = ['bike']",
     "unknown class name"),
    ({"validate": {"max_ignore_fraction": 1.5}}, "validate.max_ignore_fraction = 1.5",
     "less than or equal to 1"),
    ({"register": {"metric": "accuracy"}}, "register.metric = 'accuracy'", "miou"),
    ({"base": {"device": "tpu"}}, "base.device = 'tpu'", "cuda"),
])
def test_out_of_range_value_names_path_and_value(raw, path_and_value, detail):
    msg = _config_error(raw)
    assert path_and_value in msg
    assert detail in msg


def test_scale_range_must_be_ordered():
    msg = _config_error({"pretrain": {"scale_min": 3.0, "scale_max": 2.0}})
    assert "pretrain" in msg and "scale_min 3.0 > scale_max 2.0" in msg


def test_real_source_needs_voc_root():
    msg = _config_error({"prepare": {"source": "real"}})
    assert "prepare" in msg and "voc_root" in msg
    ok = parse_params({"prepare": {"source": "real", "voc_root": "/data/VOC2012"}})
    assert ok.prepare.voc_root == "/data/VOC2012"


def test_non_mapping_is_rejected():
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        parse_params([1, 2], "x.yaml")


def test_load_params_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "params.yaml"
    with pytest.raises(FileNotFoundError) as exc:
        load_params(missing)
    assert str(missing) in str(exc.value)


def test_load_params_reports_file_name(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("finetune:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_params(p)
    assert str(p) in str(exc.value) and "finetune.learning_rate" in str(exc.value)


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_params(p) == Params()


def test_deep_merge_semantics():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": [1, 2], "c": {"k": 1}, "d": 5}
    overlay = {"a": {"y": {"q": 3, "r": 4}}, "b": [9], "c": 7, "e": {"new": True}}
    merged = deep_merge(base, overlay)
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 3, "r": 4}}, "b": [9], "c": 7, "d": 5,
                      "e": {"new": True}}
    # the inputs are left as they were
    assert base == {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": [1, 2], "c": {"k": 1}, "d": 5}
    assert overlay == {"a": {"y": {"q": 3, "r": 4}}, "b": [9], "c": 7, "e": {"new": True}}


def test_deep_merge_dict_overlay_replaces_scalar():
    assert deep_merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}


def test_overlay_file_is_applied(tmp_path):
    base = load_params(PARAMS)
    ov = tmp_path / "overlay.yaml"
    ov.write_text("finetune:\n  iterations: 7\nmodel:\n  output_stride: 8\n"
                  "inference:\n  scales: [0.5, 1.0]\n")
    params = load_params(PARAMS, [ov])
    assert params.finetune.iterations == 7
    assert params.model.output_stride == 8
    assert params.inference.scales == (0.5, 1.0)
    # untouched keys of overridden sections keep the base file's values
    assert params.finetune.lr == base.finetune.lr
    assert params.model.preset == base.model.preset
    assert params.pretrain == base.pretrain


def test_overlays_apply_in_order(tmp_path):
    base = tmp_path / "p.yaml"
    base.write_text("finetune:\n  iterations: 5\n")
    o1, o2 = tmp_path / "o1.yaml", tmp_path / "o2.yaml"
    o1.write_text("finetune:\n  iterations: 6\n  lr: 0.5\n")
    o2.write_text("finetune:\n  iterations: 9\n")
    params = load_params(base, [o1, o2])
    assert params.finetune.iterations == 9 and params.finetune.lr == 0.5


def test_invalid_overlay_is_named_in_the_error(tmp_path):
    ov = tmp_path / "typo_overlay.yaml"
    ov.write_text("model:\n  outputstride: 8\n")
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS, [ov])
    msg = str(exc.value)
    assert "model.outputstride" in msg and "unknown key" in msg
    assert str(ov) in msg


# ----------------------------------------------------------------------------- shared train section
def test_train_section_is_merged_under_pretrain_and_finetune():
    raw = yaml.safe_load(PARAMS.read_text())
    params = load_params(PARAMS)
    for key, value in raw["train"].items():
        for section in ("pretrain", "finetune"):
            if key not in raw[section]:
                got = getattr(getattr(params, section), key)
                assert _normalise(got) == _normalise(value), f"{section}.{key}"
    # each section's own keys win over train's
    params = parse_params({"train": {"lr": 0.5, "iterations": 9}, "finetune": {"lr": 0.25}})
    assert (params.pretrain.lr, params.finetune.lr) == (0.5, 0.25)
    assert params.pretrain.iterations == params.finetune.iterations == 9
    assert isinstance(params.finetune.use_bootstrap, bool)


def test_project_params_train_sections_hold_only_what_differs():
    raw = yaml.safe_load(PARAMS.read_text())
    common = {k for k in raw["pretrain"] if raw["finetune"].get(k) == raw["pretrain"][k]}
    assert not common, f"params.yaml: pretrain and finetune both set {sorted(common)}; use train"


def test_error_in_train_names_the_train_key():
    msg = _config_error({"train": {"batch_size": 1}})
    assert "train.batch_size (shared, merged into pretrain) = 1" in msg
    assert msg.count("train.batch_size") == 2  # once for each section it reaches
    msg = _config_error({"train": {"use_bootstrap": False}})
    assert "train.use_bootstrap (shared, merged into pretrain): unknown key" in msg
    # a key the section sets itself is named in the section
    msg = _config_error({"train": {"lr": 0.1}, "finetune": {"lr": -1}})
    assert "finetune.lr = -1" in msg and "train.lr" not in msg


def test_train_section_must_be_a_mapping():
    msg = _config_error({"train": [1, 2]})
    assert "params-under-test.yaml: train = [1, 2]: expected a mapping" in msg


def test_later_overlay_train_key_beats_earlier_section_key(tmp_path):
    base = tmp_path / "p.yaml"
    base.write_text("train:\n  lr: 0.1\npretrain:\n  lr: 0.2\n  iterations: 5\n")
    ov = tmp_path / "o.yaml"
    ov.write_text("train:\n  lr: 0.3\n")
    params = load_params(base, [ov])
    assert params.pretrain.lr == params.finetune.lr == 0.3
    assert params.pretrain.iterations == 5


# ----------------------------------------------------------------------------- _base_ overlays
def test_overlay_bases_stack_in_order_then_the_file(tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "a.yaml").write_text("finetune:\n  lr: 0.1\n  iterations: 3\n")
    (tmp_path / "_base_" / "b.yaml").write_text("_base_: [a.yaml]\nfinetune:\n  lr: 0.2\n")
    top = tmp_path / "top.yaml"
    top.write_text("_base_: [_base_/b.yaml]\nfinetune:\n  crop_size: 64\n")
    assert read_overlay(top) == {"finetune": {"lr": 0.2, "iterations": 3, "crop_size": 64}}
    params = load_params(PARAMS, [top])
    assert (params.finetune.lr, params.finetune.iterations, params.finetune.crop_size) == \
        (0.2, 3, 64)


def test_overlay_base_cycle_and_missing_base_are_named(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_base_: [b.yaml]\n")
    b.write_text("_base_: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        read_overlay(a)
    c = tmp_path / "c.yaml"
    c.write_text("_base_: [nowhere.yaml]\n")
    with pytest.raises(ConfigError,
                       match=r"c\.yaml: _base_ entry 'nowhere\.yaml': file .* not found"):
        read_overlay(c)
    c.write_text("_base_: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: _base_ = \{'a': 1\}: expected a list"):
        read_overlay(c)
