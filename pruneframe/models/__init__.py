"""Model specs to loaded models: the embedded SmolLM2, local folders, pruned checkpoints, hub ids."""

from pruneframe.models.resolver import DTYPES, ResolvedModel, load_model, parse_dtype, resolve_model_path
from pruneframe.models.smollm2 import SMOLLM2_NAME, build_smollm2, cache_root

__all__ = [
    "DTYPES",
    "ResolvedModel",
    "load_model",
    "parse_dtype",
    "resolve_model_path",
    "SMOLLM2_NAME",
    "build_smollm2",
    "cache_root",
]
