"""Configuration: what every peer of a run agrees on (RunConfig, run.toml) and how one node runs
(NodeConfig: defaults < --config file < SWARMTRAIN_* environment < flags).

  settings.py   the run's keyword-only dataclasses, a docstring per field, Literal types for choices
  local.py      NodeConfig: one node's own settings, the same way
  schema.py     what the dataclasses say about themselves: field docs, types, pydantic checks
  load.py       run.toml and a node's sources into settings; `config show`'s rows
  validate.py   the one place where values are checked: ranges, choices, rules across fields
  flags.py      command-line flags made from the same dataclasses, per command
  reference.py  docs/run-file.md, every run.toml setting, from settings.py and validate.py
"""

from node.config.load import (
    CHEAP_WORK_TOML,
    ENV_PREFIX,
    as_dict,
    describe,
    environ,
    from_dict,
    load_node_config,
    load_run_config,
    read_toml,
)
from node.config.local import EventLoop, LogFormat, NodeConfig
from node.config.schema import field_docs, type_hints, type_name
from node.config.settings import (
    AggregatorName,
    CorpusName,
    DataConfig,
    IndexBits,
    InnerOptimizer,
    ModelConfig,
    ModelKind,
    PeftConfig,
    PeftMethod,
    PrivacyConfig,
    RobustConfig,
    RunConfig,
    StrategyConfig,
    StrategyName,
    SwarmConfig,
    TopKValues,
    TrainConfig,
    WireDtype,
)
from node.config.validate import Range, validate_node, validate_run

__all__ = [
    "CHEAP_WORK_TOML",
    "ENV_PREFIX",
    "as_dict",
    "describe",
    "environ",
    "from_dict",
    "load_node_config",
    "load_run_config",
    "read_toml",
    "field_docs",
    "type_hints",
    "type_name",
    "AggregatorName",
    "CorpusName",
    "DataConfig",
    "EventLoop",
    "IndexBits",
    "InnerOptimizer",
    "LogFormat",
    "ModelConfig",
    "ModelKind",
    "NodeConfig",
    "PeftConfig",
    "PeftMethod",
    "PrivacyConfig",
    "RobustConfig",
    "RunConfig",
    "StrategyConfig",
    "StrategyName",
    "SwarmConfig",
    "TopKValues",
    "TrainConfig",
    "WireDtype",
    "Range",
    "validate_node",
    "validate_run",
]
