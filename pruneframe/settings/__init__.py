"""Validated settings and the inputs they name, shared by every command: prune, recover, eval, export and compare.

It sits below the comparison harness, so ``pruneframe prune`` validates its settings and loads its
inputs without it:

* :mod:`~pruneframe.settings.errors`: :class:`~pruneframe.settings.errors.InputError` (bad input, exit
  2 on the command line) and :func:`~pruneframe.settings.errors.explain`;
* :mod:`~pruneframe.settings.fields`: the typed fields the commands' settings share (dtype, device,
  budget number, seed) and the budget checks;
* :mod:`~pruneframe.settings.text`: where a calibration or recovery text comes from, found when a run starts;
* :mod:`~pruneframe.settings.phases`: which errors an input phase reports as bad input;
* :mod:`~pruneframe.settings.loading`: the model, its tokenizer and identity, and the calibration stream;
* :mod:`~pruneframe.settings.recovery`: the recovery, its text and its token stream.
"""
