"""Config says what is wrong when it is built: shorthands, 1-tuples, allowed values, devices, files."""

import json

import pytest
import torch

from grounding.config import GroundingConfig


@pytest.fixture
def cfg():
    return GroundingConfig()


def test_views_shorthand_is_views_mode(cfg):
    assert cfg.replace(views="assembled").views.mode == "assembled"
    assert cfg.replace(views__mode="assembled") == cfg.replace(views="assembled")


def test_bool_shorthand_is_enabled(cfg):
    assert cfg.replace(magnets=False).magnets.enabled is False
    assert cfg.replace(sinks=False).sinks.enabled is False
    assert cfg.replace(redistribution=False).redistribution.enabled is False
    assert cfg.replace(refine=True).refine.enabled is True
    assert cfg.replace(sinks="suppress").sinks.mode == "suppress"


def test_shorthand_without_a_meaning_names_the_right_spelling(cfg):
    with pytest.raises(TypeError, match="answer__contrast"):
        cfg.replace(answer=False)
    with pytest.raises(TypeError, match="views__mode"):
        cfg.replace(views=1)


def test_group_as_a_dict_merges(cfg):
    c = cfg.replace(sinks={"mode": "suppress"})
    assert c.sinks.mode == "suppress" and c.sinks.threshold == cfg.sinks.threshold
    with pytest.raises(ValueError, match="unknown sinks options"):
        cfg.replace(sinks={"mood": "x"})


def test_single_value_for_a_tuple_field_is_a_1_tuple(cfg):
    assert cfg.replace(timesteps=0.2).timesteps == (0.2,)
    assert cfg.replace(timesteps=[0.2, 0.4]).timesteps == (0.2, 0.4)
    assert cfg.replace(blocks="transformer_blocks.0").blocks == ("transformer_blocks.0",)
    assert cfg.replace(magnets__words="and").magnets.words == ("and",)
    assert GroundingConfig(timesteps=0.5).timesteps == (0.5,)


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("sinks__mode", "supress", "redirect"),
        ("views__fill", "x", "attention"),
        ("views__mode", "local", "assembled"),
    ],
)
def test_unknown_choices_list_the_allowed_values(cfg, key, value, allowed):
    with pytest.raises(ValueError, match=allowed):
        cfg.replace(**{key: value})


def test_unknown_choice_fails_at_construction_too():
    from grounding.config import SinkConfig, ViewsConfig

    with pytest.raises(ValueError, match="suppress"):
        SinkConfig(mode="supress")
    with pytest.raises(ValueError, match="blur"):
        ViewsConfig(fill="x")


@pytest.mark.parametrize(
    "changes",
    [
        {"timesteps": 1.0},
        {"timesteps": ()},
        {"threshold": 0.0},
        {"seed": -1},
        {"seed": 2**64},
        {"resolution": 0},
        {"magnets__enabled": "yes"},
        {"guidance_scale": "high"},
        {"blocks": ()},
        {"sinks__quantile": 2.0},
        {"max_image_pixels": 1.5},
    ],
)
def test_bad_values_are_value_errors(cfg, changes):
    with pytest.raises(ValueError):
        cfg.replace(**changes)


def test_unknown_option_suggests_the_double_underscore(cfg):
    with pytest.raises(ValueError, match="sinks__mode"):
        cfg.replace(sinks_mode="suppress")
    with pytest.raises(ValueError, match="unknown grounding option"):
        cfg.replace(nope=1)


def test_round_trip_and_malformed_files(tmp_path, cfg):
    c = cfg.replace(views="assembled", timesteps=[0.2, 0.4])
    c.save_pretrained(tmp_path)
    assert GroundingConfig.from_pretrained(tmp_path) == c
    assert GroundingConfig.from_pretrained(tmp_path / "absent") == GroundingConfig()
    (tmp_path / "grounding.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GroundingConfig.from_pretrained(tmp_path)
    for doc in (["a list"], {"sinks": {"mode": "supress"}}, {"timesteps": "soon"}, {"sinks": 3}, {"nope": 1}):
        (tmp_path / "grounding.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="grounding.json"):
            GroundingConfig.from_pretrained(tmp_path)


def test_torch_device_is_accepted(tiny_flux_dir):
    from grounding import Grounder

    g = Grounder.from_pretrained(tiny_flux_dir, device=torch.device("cpu"), dtype=torch.float32)
    assert g.backend.device == torch.device("cpu")


def test_request_options_take_their_ranges_and_choices_from_the_config():
    """Each option that overrides a config field is checked by that field's own declaration: the
    range declared once with ``bounded`` (the seed cut to the proto's int32) and the same ``Literal``."""
    import typing

    import annotated_types
    import pydantic

    from grounding.config import GroundingConfig, bounds
    from grounding.serving.schema import INT32_MAX, Options

    hints = typing.get_type_hints(Options)
    ranged = 0
    for name, f in Options.model_fields.items():
        key = (f.json_schema_extra or {}).get("config")
        if not key:
            continue
        got = {}
        for m in f.metadata:
            for op in ("gt", "ge", "lt", "le"):
                if isinstance(m, getattr(annotated_types, op.capitalize())):
                    got[op] = getattr(m, op)
        want = bounds(key)
        if name == "seed":
            want = {**want, "le": INT32_MAX}
        assert got == want, (name, key, got, want)
        ranged += bool(want)
        # choices: the option's Literal is the config field's
        config_hint = typing.get_type_hints(GroundingConfig)
        *groups, leaf = key.split(".")
        for g in groups:
            config_hint = typing.get_type_hints(config_hint[g])
        option_args = [a for a in typing.get_args(hints[name]) if a is not type(None)]
        if typing.get_origin(config_hint[leaf]) is typing.Literal:
            assert option_args == [config_hint[leaf]], (name, option_args, config_hint[leaf])
    assert ranged >= 2  # threshold and seed
    with pytest.raises(pydantic.ValidationError):
        Options(threshold=1.0)
    with pytest.raises(ValueError, match=r"threshold must be in \(0.0, 1.0\)"):
        GroundingConfig(threshold=1.0)
    with pytest.raises(ValueError, match="instances.max_instances must be ≥ 1"):
        GroundingConfig().replace(instances__max_instances=0)
