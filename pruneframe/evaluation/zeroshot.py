"""Zero-shot accuracy through lm-eval, on a model already in memory.

Each entry of ``tasks`` is either

- a local JSONL multiple-choice file (rows ``{"question": str, "choices": [str, ...], "label": int}``), or a
  bare name ``NAME`` for which ``$PRUNEFRAME_DATA_DIR/zeroshot/NAME.jsonl`` exists: registered with lm-eval
  on the fly as a ``multiple_choice`` task read by the ``json`` dataset builder (works offline);
- any other string: an lm-eval task name or task YAML file (data from the hub: needs a network or a cache).

Results per task: ``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr``, ``docs``, the 95% Wilson
intervals ``acc_ci`` and ``acc_norm_ci`` (``[low, high]``), and ``items``: each document's 0/1 correctness
per metric in document order, so intervals and paired comparisons can be recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from pruneframe.data.jsonl import iter_jsonl
from pruneframe.data.sources import data_dir
from pruneframe.util.devices import dtype_name
from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.protocol import ZeroShotProtocol, ZeroShotTaskStamp
from pruneframe.evaluation.stats import proportion_interval
from pruneframe.util.offload import StreamingOptions
from pruneframe.util.io import read_small_text
from pruneframe.util.paths import user_path

__all__ = [
    "PROMPT",
    "LocalTask",
    "local_task",
    "resolve_task",
    "check_lm_eval_tasks",
    "jsonl_task_config",
    "zeroshot",
    "ZeroShotConfig",
    "ZeroShotEvaluator",
]

#: The prompt template of local multiple-choice tasks (the answer is scored after it).
PROMPT = "Question: {{question}}\nAnswer:"
_METRICS = ("acc", "acc_norm")


class LocalTask(BaseModel):
    """A local JSONL multiple-choice file registered as an lm-eval task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    path: str
    fingerprint: str
    docs: int


_FIELDS = ("question", "choices", "label")


def _row_problem(row: Any) -> str | None:
    """What is wrong with one multiple-choice row, or None when it is valid."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [name for name in _FIELDS if name not in row]
    if missing:
        return f"missing field(s) {missing}"
    question, choices, label = row["question"], row["choices"], row["label"]
    if not isinstance(question, str):
        return f"'question' must be a string, got {type(question).__name__}"
    if not isinstance(choices, list) or not choices:
        return "'choices' must be a non-empty list of strings"
    if len(choices) < 2:
        return f"'choices' has {len(choices)} entry; a multiple-choice item needs at least 2"
    if not all(isinstance(c, str) and c.strip() for c in choices):
        return "every entry of 'choices' must be a non-empty string"
    if isinstance(label, bool) or not isinstance(label, int):
        return f"'label' must be an integer index into 'choices', got {label!r}"
    if not 0 <= label < len(choices):
        return f"'label' {label} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
    return None  # other fields (ids, sources) are allowed and ignored


def _check_rows(path: Path) -> int:
    """Validate every row of a multiple-choice JSONL file; return how many there are.

    Raises:
        ValueError: ``"<path>:<line>: <what is wrong>"`` for the first bad row, or an empty file.
    """
    count = 0
    for lineno, row in iter_jsonl(path):
        problem = _row_problem(row)
        if problem is not None:
            raise ValueError(f'{path}:{lineno}: {problem} (rows are {{"question": str, "choices": [str, ...], "label": int}})')
        count += 1
    if count == 0:
        raise ValueError(f"{path}: no rows")
    return count


def local_task(path: str | Path) -> LocalTask:
    """Describe a local JSONL multiple-choice file (validated) as a task named ``pf_<stem>``."""
    file = user_path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"zero-shot task file {str(file)!r} does not exist")
    docs = _check_rows(file)
    fingerprint = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    name = "pf_" + re.sub(r"[^0-9A-Za-z_]+", "_", file.stem)
    return LocalTask(task=name, path=str(file), fingerprint=fingerprint, docs=docs)


def resolve_task(spec: str) -> LocalTask | str:
    """A local task for a ``.jsonl`` path or a name under ``$PRUNEFRAME_DATA_DIR/zeroshot``.

    Anything else (an lm-eval task name, or the path of an lm-eval YAML task file) is returned as a string.

    Raises:
        ValueError: a file that is neither a ``.jsonl`` task nor an lm-eval task YAML (a mapping).
    """
    path = user_path(spec)
    if path.suffix == ".jsonl":
        return local_task(path)
    if path.is_file():
        _check_task_yaml(path)
        return str(path.resolve())
    root = data_dir()
    if root is not None and re.fullmatch(r"[0-9A-Za-z_.-]+", spec):
        shared = root / "zeroshot" / f"{spec}.jsonl"
        if shared.is_file():
            return local_task(shared)
    return spec


class _TaskLoader(yaml.SafeLoader):
    """Safe YAML reading every ``!tag`` (lm-eval's ``!function module.name``) as nothing: nothing is imported or run."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _check_task_yaml(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it reads as an lm-eval task YAML: a mapping of the task's settings."""
    try:
        data = yaml.load(read_small_text(path), Loader=_TaskLoader)  # a SafeLoader: builds plain values only
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"zero-shot task file {str(path)!r} is not an lm-eval task YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"zero-shot task file {str(path)!r} is neither a .jsonl file of {{question, choices, label}} rows nor an lm-eval task YAML "
            f"(a mapping of the task's settings; it holds a {type(data).__name__})"
        )


@functools.cache
def _task_manager() -> Any:
    """lm-eval's registry of tasks, built once per process (it indexes every task file it ships: seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def check_lm_eval_tasks(names: list[str], manager: Any = None) -> None:
    """Refuse the names among ``names`` that are neither an lm-eval task file nor a registered lm-eval task.

    ``names`` are what :func:`resolve_task` left as strings; ``manager`` is an lm-eval ``TaskManager``
    (built here, which is slow, only when there are names to check).

    Raises:
        ValueError: naming every unknown task.
    """
    if not names:
        return
    if manager is None:
        manager = _task_manager()
    unknown = sorted({n for n in names if n not in manager.all_tasks and not Path(n).is_file()})
    if unknown:
        raise ValueError(
            f"unknown zero-shot task(s) {unknown}: neither a local .jsonl file with {{question, choices, label}} rows, "
            "a name under <data dir>/zeroshot, nor a registered lm-eval task"
        )


def jsonl_task_config(task: LocalTask) -> dict[str, Any]:
    """The lm-eval task config dict for a local multiple-choice file."""
    return {
        "task": task.task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": task.path}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT,
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in _METRICS],
        "metadata": {"version": 1.0, "source": task.path, "fingerprint": task.fingerprint},
    }


def _metric(row: dict[str, Any], name: str) -> float | None:
    value = row.get(f"{name},none", row.get(name))
    if value is None or value == "N/A":
        return None
    return float(value)


def _item_results(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-document correctness (document order) and the Wilson interval of each metric lm-eval logged."""
    ordered = sorted(samples, key=lambda sample: sample.get("doc_id", 0))
    items: dict[str, list[int]] = {}
    for metric in _METRICS:
        values = [sample.get(metric) for sample in ordered]
        if values and all(v in (0, 1, 0.0, 1.0, True, False) for v in values):
            items[metric] = [int(v) for v in values]
    out: dict[str, Any] = {"items": items}
    for metric, values in items.items():
        summary = proportion_interval(values)
        out[f"{metric}_ci"] = [summary["low"], summary["high"]]
    return out


def zeroshot(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    seed: int = 0,
    stream_device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy of an in-memory model on ``tasks`` (local JSONL files or lm-eval names).

    With ``stream_device`` every forward pass runs one decoder layer at a time there
    (:class:`~pruneframe.evaluation.streamed_lm.StreamedHFLM`), the weights staying where they are:
    for a model larger than the device; the accuracies are the same.

    Returns ``{"tasks": {name: {acc, acc_stderr, acc_norm, acc_norm_stderr, acc_ci, acc_norm_ci, docs, source,
    items}}, "protocol": ...}`` (``items``: per-document 0/1 correctness by metric, in document order).

    Raises:
        ValueError: no tasks, a malformed local file, or an lm-eval task name that is unknown.
    """
    if not tasks:
        raise ValueError("zeroshot: no tasks given")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    resolved = [resolve_task(spec) for spec in tasks]
    locals_ = [r for r in resolved if isinstance(r, LocalTask)]
    names = [r for r in resolved if isinstance(r, str)]
    manager = TaskManager(include_defaults=bool(names))
    check_lm_eval_tasks(names, manager)
    if stream_device is None:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    else:
        from pruneframe.evaluation.streamed_lm import StreamedHFLM

        lm = StreamedHFLM(model, tokenizer, batch_size, stream_device)
    specs: list[str | dict[str, Any]] = [jsonl_task_config(t) for t in locals_] + names
    output = simple_evaluate(
        model=lm,
        tasks=specs,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if output is None:  # non-zero rank in a distributed run
        return {}
    results: dict[str, Any] = {}
    stamps: list[ZeroShotTaskStamp] = []
    local_by_name = {t.task: t for t in locals_}
    samples = output.get("samples") or {}
    for name, row in output["results"].items():
        docs = int(output.get("n-samples", {}).get(name, {}).get("effective", 0))
        local = local_by_name.get(name)
        source = local.path if local else "lm-eval"
        results[name] = {
            "acc": _metric(row, "acc"),
            "acc_stderr": _metric(row, "acc_stderr"),
            "acc_norm": _metric(row, "acc_norm"),
            "acc_norm_stderr": _metric(row, "acc_norm_stderr"),
            "docs": docs,
            "source": source,
            **_item_results(samples.get(name) or []),
        }
        stamps.append(ZeroShotTaskStamp(task=name, source=source, fingerprint=local.fingerprint if local else None, docs=docs))
    protocol = ZeroShotProtocol(
        tasks=tuple(stamps),
        num_fewshot=num_fewshot,
        limit=limit,
        prompt=PROMPT if locals_ else "lm-eval task default",
        lm_eval_version=importlib.metadata.version("lm_eval"),
        dtype=dtype_name(model),
    )
    return {"tasks": results, "protocol": protocol.model_dump(mode="json")}


class ZeroShotConfig(StreamingOptions):
    """Zero-shot settings: tasks (local JSONL paths, shared-data names or lm-eval names) and limits.

    ``offload="cpu"`` runs every forward pass one decoder layer at a time on ``compute_device``
    (inherited from :class:`~pruneframe.util.offload.StreamingOptions`), for a model larger than the device.
    """

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: ["physical_intuition", "winowhy"], min_length=1)
    limit: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    num_fewshot: Annotated[int, Field(ge=0)] = 0


class ZeroShotEvaluator(Evaluator):
    """Zero-shot multiple-choice accuracy through lm-eval."""

    name: ClassVar[str] = "zeroshot"
    Config: ClassVar[type[BaseModel]] = ZeroShotConfig

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Run :func:`zeroshot` with this evaluator's config and the context's seed."""
        cfg: ZeroShotConfig = self.config  # type: ignore[assignment]
        if tokenizer is None:
            raise ValueError("zeroshot: a tokenizer is required (the model was loaded without one)")
        return zeroshot(
            model,
            tokenizer,
            cfg.tasks,
            limit=cfg.limit,
            batch_size=cfg.batch_size,
            num_fewshot=cfg.num_fewshot,
            seed=context.seed,
            stream_device=cfg.device_for(model) if cfg.streaming else None,
        )
