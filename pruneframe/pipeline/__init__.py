"""The five-stage pipeline and its contract: units, scoring methods, budget projection, recalibration, folding.

:mod:`~pruneframe.pipeline.hookspecs` defines one pluggy hook per stage and :mod:`~pruneframe.pipeline.host`
is the only caller of them; :mod:`~pruneframe.pipeline.session` runs one prune through the stages and
:mod:`~pruneframe.pipeline.prune_report` is its typed record. The math (:mod:`~pruneframe.pipeline.budget`,
:mod:`~pruneframe.pipeline.projection`, :mod:`~pruneframe.pipeline.fold`) is pure functions.
"""
