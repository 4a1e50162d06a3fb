"""Deployment: pruned (and dense) models as GGUF files for llama.cpp and ollama, checked and timed there.

* :func:`export_gguf` writes the file (:mod:`~pruneframe.export.plan` takes the llama.cpp architecture
  from the model's adapter, :meth:`~pruneframe.architectures.ArchitectureAdapter.gguf_spec`, and plans
  any exact zero padding, :mod:`~pruneframe.export.tensors` lays the weights out,
  :mod:`~pruneframe.export.vocab` carries the tokenizer, :mod:`~pruneframe.export.writer` writes). The
  package knows no family: everything family-specific comes from the adapter;
* :mod:`pruneframe.export.verify` runs the file in llama.cpp (through the optional ``xllamacpp``
  package) beside the checkpoint in transformers and compares their next-token distributions;
* :mod:`pruneframe.export.speed` times files there and :mod:`pruneframe.export.perplexity` scores their
  perplexity with llama.cpp's own logits.
"""

from pruneframe.export.gguf_export import GGUF_DTYPES, ExportResult, export_gguf
from pruneframe.export.plan import ExportRefused, GGUFPlan, LayerPlan, plan_export
from pruneframe.export.writer import is_pruneframe_gguf

__all__ = ["export_gguf", "ExportResult", "ExportRefused", "GGUF_DTYPES", "GGUFPlan", "LayerPlan", "plan_export", "is_pruneframe_gguf"]
