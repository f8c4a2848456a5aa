"""configs/models.py exposes every preset the ml_collections way."""

import importlib.util
import pathlib

import pytest

from giftjax.models.presets import PRESETS, from_config_dict

_PATH = pathlib.Path(__file__).parents[1] / "configs" / "models.py"


def _module():
    spec = importlib.util.spec_from_file_location("configs_models", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_get_config_round_trips_each_preset(name):
    config = _module().get_config(name)
    assert config.preset == name
    assert from_config_dict(config.model) == PRESETS[name]
    assert config.rules in ("fsdp", "fsdp_tp") and config.mesh.fsdp == -1


def test_defaults_and_errors():
    module = _module()
    assert module.get_config().preset == "tiny"
    config = module.get_config("qwen2.5-7b")
    config.model.dtype = "float32"
    assert from_config_dict(config.model).dtype == "float32"
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'"):
        module.get_config("gpt5")
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['width'\]"):
        from_config_dict({"width": 3})
