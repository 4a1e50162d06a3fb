"""Architecture adapters: how units are found and reached inside each family of models.

Public names for plugin authors: :class:`ArchitectureAdapter` (subclass it for a new family and
register an instance through ``pruneframe_register_architectures``; :class:`SplitProjectionAdapter`
already covers any family with Llama's module names), :class:`LayerSlices`,
:class:`WeightSlice`, :class:`LayerWidths`, and :func:`adapter_for` (the adapter of a model). A family
that llama.cpp runs describes its GGUF layout with the types of :mod:`pruneframe.architectures.gguf`
(:meth:`ArchitectureAdapter.gguf_spec`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from pruneframe.architectures.base import (
    ArchitectureAdapter,
    LayerSlices,
    WeightSlice,
    count_parameters,
    unit_indices,
)
from pruneframe.architectures.llama import SplitProjectionAdapter
from pruneframe.pipeline.units import LayerWidths, UnitSet

if TYPE_CHECKING:
    from pruneframe.pipeline.host import PluginHost

__all__ = [
    "ArchitectureAdapter",
    "LayerSlices",
    "LayerWidths",
    "SplitProjectionAdapter",
    "WeightSlice",
    "adapter_for",
    "adapter_for_class",
    "builtin_adapters",
    "discover",
    "layer_slices",
    "count_parameters",
    "unit_indices",
]


def builtin_adapters() -> list[ArchitectureAdapter]:
    """The adapters pruneframe ships: Llama family, Gemma 3, Phi-3."""
    from pruneframe.architectures.gemma3 import Gemma3Adapter
    from pruneframe.architectures.llama import LlamaAdapter
    from pruneframe.architectures.phi3 import Phi3Adapter

    return [LlamaAdapter(), Gemma3Adapter(), Phi3Adapter()]


def adapter_for(model: nn.Module, host: "PluginHost | None" = None) -> ArchitectureAdapter:
    """The adapter that handles ``model``: from ``host``, else from a fresh host with the installed plugins.

    Raises:
        NotImplementedError: no installed adapter handles the model's class (the message lists them).
    """
    if host is None:
        for adapter in builtin_adapters():  # the common case needs no plugin scan
            if adapter.matches(model):
                return adapter
        from pruneframe.pipeline.host import PluginHost

        host = PluginHost.create()
    return host.adapter_for(model)


def adapter_for_class(name: str, host: "PluginHost | None" = None) -> ArchitectureAdapter:
    """The adapter whose :attr:`~ArchitectureAdapter.architectures` name the model class ``name`` (see :func:`adapter_for`).

    Raises:
        NotImplementedError: no installed adapter handles a class of that name (the message lists them).
    """
    if host is None:
        for adapter in builtin_adapters():
            if name in adapter.architectures:
                return adapter
        from pruneframe.pipeline.host import PluginHost

        host = PluginHost.create()
    adapters = host.adapters()
    for adapter in adapters:
        if name in adapter.architectures:
            return adapter
    supported = sorted({a for adapter in adapters for a in adapter.architectures})
    raise NotImplementedError(f"no installed plugin handles {name}; supported: {', '.join(supported)}")


def discover(model: nn.Module, host: "PluginHost | None" = None) -> UnitSet:
    """The :class:`~pruneframe.pipeline.units.UnitSet` of ``model`` (see :func:`adapter_for`)."""
    return adapter_for(model, host).discover(model)


def layer_slices(model: nn.Module, host: "PluginHost | None" = None) -> list[LayerSlices]:
    """Per decoder layer of ``model``, where each unit's weights are (see :func:`adapter_for`)."""
    return adapter_for(model, host).layer_slices(model)
