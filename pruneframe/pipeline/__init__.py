"""The five-stage pipeline and its contract: units, scoring methods, budget projection, recalibration, folding.

:mod:`~pruneframe.pipeline.hookspecs` defines one pluggy hook per stage and :mod:`~pruneframe.pipeline.host`
(with its base, :mod:`~pruneframe.pipeline.registry`, which reads the registration hooks) is the only
caller of them; :mod:`~pruneframe.pipeline.session` runs one prune through the stages and
:mod:`~pruneframe.pipeline.prune_report` is its typed record. The math (:mod:`~pruneframe.pipeline.budget`,
:mod:`~pruneframe.pipeline.projection`, :mod:`~pruneframe.pipeline.fold`) is pure functions.

The contract (units, removal, budget, the projection and its parts, methods, recalibration, the report,
the plugin errors) imports nothing of pruneframe above it, so the adapters and the toolkit build on it;
the stages (session, host, registry, fold, builtins, hidden plan) sit above both.
"""
