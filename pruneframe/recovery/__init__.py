"""Recovery: healing a folded model after pruning, identically for every method.

A recovery is a plugin kind like methods: a :class:`Recovery` subclass with a typed
:class:`RecoveryConfig`, announced through ``pruneframe_register_recoveries``. pruneframe ships
``none``, ``lora`` (PEFT adapters on next-token loss, merged) and ``distill`` (KL to the dense model's
next-token distribution, full or LoRA). The training loop (:mod:`pruneframe.recovery.loop`), the token
stream every method shares (:mod:`pruneframe.recovery.stream`) and the teacher's outputs computed
once (:mod:`pruneframe.recovery.teacher`) belong to the core, so recoveries differ only in what they
train and on which loss.
"""

from pruneframe.recovery.base import Recovery, RecoveryConfig, RecoveryContext, RecoveryRecord
from pruneframe.recovery.run import RecoveryResult, recover, resolve_recovery, text_stream
from pruneframe.recovery.stream import RecoveryDataError, RecoveryStream, make_stream
from pruneframe.recovery.teacher import TeacherTargets, compute_teacher, top_k_kl

__all__ = [
    "Recovery",
    "RecoveryConfig",
    "RecoveryContext",
    "RecoveryRecord",
    "RecoveryResult",
    "RecoveryDataError",
    "RecoveryStream",
    "TeacherTargets",
    "recover",
    "resolve_recovery",
    "text_stream",
    "make_stream",
    "compute_teacher",
    "top_k_kl",
]
