"""params.yaml schema: defaults, unknown keys, out-of-range values, overlays, deep_merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deeplab_core.config import ConfigError, Params, deep_merge, load_params, parse_params

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
    raw = yaml.safe_load(PARAMS.read_text())
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
    ({"model": {"eval_output_stride": 4}}, "model.eval_output_stride = 4", "not supported"),
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
                  "evaluate:\n  scales: [0.5, 1.0]\n")
    params = load_params(PARAMS, [ov])
    assert params.finetune.iterations == 7
    assert params.model.output_stride == 8
    assert params.evaluate.scales == (0.5, 1.0)
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
