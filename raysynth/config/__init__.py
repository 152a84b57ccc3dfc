"""Run configuration: frozen dataclasses per stage, presets, overrides."""

from raysynth.config.load import (
    build_config,
    dump_yaml,
    list_presets,
    load_resolved,
    parse_set,
    replace,
    to_dict,
    valid_keys,
)
from raysynth.config.schema import (
    BUDGETS,
    ClassifierConfig,
    DataConfig,
    EncoderConfig,
    EndToEndConfig,
    ProtocolConfig,
    RunConfig,
    ScalingConfig,
    SynthesisConfig,
    TuneConfig,
)

__all__ = [
    "BUDGETS",
    "ClassifierConfig",
    "DataConfig",
    "EncoderConfig",
    "EndToEndConfig",
    "ProtocolConfig",
    "RunConfig",
    "ScalingConfig",
    "SynthesisConfig",
    "TuneConfig",
    "build_config",
    "dump_yaml",
    "list_presets",
    "load_resolved",
    "parse_set",
    "replace",
    "to_dict",
    "valid_keys",
]
