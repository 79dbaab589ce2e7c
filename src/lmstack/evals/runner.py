"""Run a task against a model: concurrency, per-sample logs, deterministic seeds, epochs, resume.

1. Resolve the settings (the task's config, overridden by the caller's) and the samples (`limit`).
2. Create the run in the database, or load it when resuming (refused while another live process executes it),
   and skip every (sample, epoch) already done.
3. Solve and score the rest on a thread pool; the model's own semaphore caps calls per endpoint.
   Each result is committed as soon as it is scored, so a crash loses at most the samples in flight,
   and their finished model calls are in the response cache.
4. Summarize: epochs reduced per sample, mean / SE / bootstrap CI per scorer, usage and cost.

A failure inside one sample (bad dataset row, model endpoint down, a solver or scorer raising) is
recorded on that sample with its reason; the run goes on, and `--resume` retries it. Any other exception,
and Ctrl-C, marks the run 'failed' with the reason (its finished samples are kept for `--resume`) and is
raised again.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from typing import Any

from tqdm.auto import tqdm

from lmstack.errors import LmstackError
from lmstack.evals.dataset import check_unique_ids
from lmstack.evals.model import CachedModel, shown_endpoint
from lmstack.evals.sample import Sample, Score, TaskState
from lmstack.evals.solvers import SolveContext
from lmstack.evals.store import SampleRecord, Store
from lmstack.evals.summary import check_reducer, summarize_run
from lmstack.evals.task import Task, TaskConfig, TaskError, duplicate_scorer_name, scorer_name
from lmstack.train.runinfo import code_version


class ResumeError(LmstackError):
    """A run to resume that does not match the task or model given."""


@dataclass
class RunOutcome:
    run_id: str
    summary: dict[str, Any]
    requests: Counter[str]  # this process's model and judge requests: 'answered' by the endpoint, 'cached', 'failed'


def sample_seed(seed: int, sample_id: str, epoch: int) -> int:
    """A seed per (sample, epoch), independent of order and concurrency."""
    digest = hashlib.sha256(f"{seed}:{sample_id}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_config(task: Task, overrides: dict[str, Any]) -> TaskConfig:
    unknown = sorted(set(overrides) - {f.name for f in fields(TaskConfig)})
    if unknown:
        raise TaskError(f"unknown override {unknown[0]!r}; valid: {', '.join(f.name for f in fields(TaskConfig))}")
    config = TaskConfig(**{**asdict(task.config), **{k: v for k, v in overrides.items() if v is not None}})
    config.validate()
    for reducer in config.reducers:
        check_reducer(reducer, config.epochs)
    return config


def check_resume_overrides(run_id: str, kept: TaskConfig, overrides: dict[str, Any]) -> None:
    """Refuse a setting a resumed run would ignore: its samples are all scored under the run's own settings (a
    retried sample under another max_tokens would make the run's scores a mix), so a new setting needs a new run.
    A setting equal to the run's own is accepted: the run's first command line, repeated with --resume, works."""
    for name, value in overrides.items():
        if value is not None and value != getattr(kept, name):
            given = f"--{name.replace('_', '-')} {_shown(value)}"
            raise ResumeError(f"--resume {run_id}: a resumed run keeps its own settings ({_setting(kept, name)}), "
                              f"so {given} would be ignored; drop it to resume, or start a new run (without "
                              f"--resume) with {given}")


def check_resume_inputs(run_id: str, recorded: dict[str, Any], task: Task, scorers: list[str], model: CachedModel,
                        judge: CachedModel | None) -> None:
    """Refuse to resume with another model, other task arguments, other scorers or another judge than the run's: the
    samples left would be answered, built or graded differently from those it has, and its scores be a mix. (What a
    run recorded before these were kept lacks is not checked.)"""
    fix = "or start a new run (without --resume)"
    if recorded.get("endpoint") not in (None, model.endpoint):
        raise ResumeError(f"--resume {run_id}: the run's model is {shown_endpoint(recorded['endpoint'])}, not "
                          f"{shown_endpoint(model.endpoint)}; pass the run's own --model to resume it, {fix}")
    if "task_args" in recorded:
        # A run recorded before its arguments' defaults were kept has the -T ones alone: the others took the defaults.
        was, now = {**task.arg_defaults, **recorded["task_args"]}, task.arguments
        differ = [key for key in {**was, **now} if was.get(key) != now.get(key)]
        if differ:
            raise ResumeError(f"--resume {run_id}: the run was built with {_task_args(was, differ)}, not "
                              f"{_task_args(now, differ, task.args)}; pass the run's own -T arguments to resume it, "
                              f"{fix}")
    if recorded.get("scorers", scorers) != scorers:
        raise ResumeError(f"--resume {run_id}: the run is scored by {', '.join(recorded['scorers'])}, and the task "
                          f"now by {', '.join(scorers)}; resume it with the task's scorers as they were, {fix}")
    given = judge.name if judge else None
    if recorded.get("judge") != given:
        def judged(name: str | None) -> str:
            return f"judge model '{name}'" if name else "no --judge"
        raise ResumeError(f"--resume {run_id}: the run was graded with {judged(recorded.get('judge'))}, not "
                          f"{judged(given)}; pass the run's own --judge to resume it, {fix}")


def _task_args(args: dict[str, str], keys: list[str], given: dict[str, str] | None = None) -> str:
    """`args`' values of `keys` as they can be pasted; those not in `given` (when given) marked as the defaults."""
    def shown(key: str) -> str:
        if key not in args:
            return f"no -T {key}"
        default = " (its default)" if given is not None and key not in given else ""
        return f"-T {shlex.quote(f'{key}={args[key]}')}{default}"
    return " ".join(shown(key) for key in keys)


# What a setting left unset means: "max_tokens=None" told a user nothing.
_UNSET = {"max_tokens": "the endpoint's default", "limit": "every sample"}


def _setting(config: TaskConfig, name: str) -> str:
    value = getattr(config, name)
    return f"{name} unset: {_UNSET[name]}" if value is None else f"{name}={_shown(value)}"


def _shown(value: Any) -> str:
    """A setting as it is typed on the command line (reducers: comma-separated)."""
    return ",".join(value) if isinstance(value, list) else str(value)


def run_eval(task: Task, model: CachedModel, store: Store, *, judge: CachedModel | None = None,
             overrides: dict[str, Any] | None = None, run_id: str | None = None, resume: str | None = None,
             max_workers: int = 8, progress: bool = True) -> RunOutcome:
    config = resolve_config(task, overrides or {})
    if not task.dataset:
        raise TaskError(f"task '{task.name}' has no samples (an empty dataset file, or a filter that kept nothing); "
                        "give it at least one row")
    if all(sample.error for sample in task.dataset):  # e.g. a typo in `fields:`: every sample would fail alike
        raise TaskError(f"task '{task.name}': no row of its dataset can be run, so no run was recorded; the first: "
                        f"{task.dataset[0].error}")
    check_unique_ids(task.dataset)
    check_scorers(task, judge)
    scorer_names = [scorer_name(s) for s in task.scorers]
    higher = {scorer_name(s): getattr(s, "higher_is_better", True) for s in task.scorers}
    if resume:
        run = store.run(resume)
        if run.task != task.name or run.model != model.name:
            raise ResumeError(f"run '{resume}' evaluated task '{run.task}' on '{run.model}', not '{task.name}' on "
                              f"'{model.name}'; pass the same task and --model to resume it")
        run_id = resume
        config = TaskConfig(**run.config["task"])  # a resumed run keeps its own settings, and refuses others
        check_resume_overrides(resume, config, overrides or {})
        check_resume_inputs(resume, run.config, task, scorer_names, model, judge)
        samples = chosen_samples(task, config)
        # ... but not its timeout: a resume may give a larger one to the samples that timed out.
        store.claim_run(run_id, {**run.config, "timeout_s": http_timeout(model, judge),
                                 "planned_samples": len(samples)})
    else:
        samples = chosen_samples(task, config)
        # planned_samples: what an unfinished run's partial scores are out of (summary.summarized).
        run_config = {"task": asdict(config), "scorers": scorer_names, "higher_is_better": higher,
                      "endpoint": model.endpoint, "judge": judge.name if judge else None, "task_args": task.arguments,
                      "timeout_s": http_timeout(model, judge), "planned_samples": len(samples)}
        run_id = store.create_run(task.name, model.name, run_config, code_version(), run_id)

    try:
        _evaluate_pending(task, samples, config, model, judge, run_id, store, max_workers, progress)
        summary = summarize_run(store.samples(run_id, transcripts=False), config.reducers, higher, seed=config.seed)
    except Exception as err:  # a bug or a broken database, not a sample's failure: `eval list` must not say 'running'
        store.fail_run(run_id, f"{type(err).__name__}: {err}")
        raise
    except KeyboardInterrupt as err:  # Ctrl-C: finished samples are saved; the rest wait for --resume
        # Not 'interrupted': that status is a run whose process died without a word (see lmstack.run_owner).
        store.fail_run(run_id, f"stopped by Ctrl-C ({type(err).__name__}); continue it with --resume {run_id}")
        if hasattr(err, "add_note"):  # Python 3.11+; `lmstack eval run` prints it
            err.add_note(f"run {run_id} stopped; its finished samples are kept: continue it with --resume {run_id}")
        raise
    store.finish_run(run_id, summary)
    return RunOutcome(run_id, summary, model.requests + (judge.requests if judge else Counter()))


def check_scorers(task: Task, judge: CachedModel | None) -> None:
    """Refuse scorers that cannot score, before a run is recorded: two of one name (scores are kept by name, so the
    second's would overwrite the first's), or one that needs a judge when none is given (it would fail every sample)."""
    duplicate = duplicate_scorer_name(task.scorers)
    if duplicate:
        raise TaskError(f"task '{task.name}' has two scorers named '{duplicate}', and scores are kept by name; give "
                        f"one its own with lmstack.evals.task.named({duplicate}(...), '{duplicate}_2')")
    needing = [scorer_name(s) for s in task.scorers if getattr(s, "needs_judge", False)]
    if needing and judge is None:
        raise TaskError(f"task '{task.name}': scorer '{needing[0]}' needs a judge model to grade with; pass --judge "
                        "URL_OR_CHECKPOINT")


def http_timeout(model: CachedModel, judge: CachedModel | None) -> float | None:
    """Seconds one HTTP request may take, recorded with the run for a resume to keep: the model's, else (a model run
    in-process) the judge's; both are built with the one --timeout. None when neither is at a URL."""
    return next((m.timeout_s for m in (model, judge) if m is not None and m.timeout_s is not None), None)


def chosen_samples(task: Task, config: TaskConfig) -> list[Sample]:
    """The samples a run evaluates: the first `limit`, else all."""
    return task.dataset[: config.limit] if config.limit else list(task.dataset)


def _evaluate_pending(task: Task, samples: list[Sample], config: TaskConfig, model: CachedModel,
                      judge: CachedModel | None, run_id: str, store: Store, max_workers: int, progress: bool) -> None:
    """Solve and score every (sample, epoch) the run has not finished, saving each as it completes."""
    done = store.completed(run_id)
    # A sample's epochs one after another: an unfinished run's partial scores count the samples with every epoch
    # done, and epoch by epoch over the dataset had none of those before the last pass.
    jobs = [(s, e) for s in samples for e in range(config.epochs) if (s.id, e) not in done]
    bar = tqdm(total=len(samples) * config.epochs, initial=len(samples) * config.epochs - len(jobs),
               desc=f"eval {task.name}", unit="sample", disable=not progress, dynamic_ncols=True)
    errors = 0
    pool = ThreadPoolExecutor(max_workers=max_workers)
    try:
        futures = [pool.submit(evaluate_sample, task, config, sample, epoch, model, judge, run_id, store.path)
                   for sample, epoch in jobs]
        for future in as_completed(futures):
            record = future.result()
            store.save_sample(run_id, record)
            errors += record.failure is not None  # a failed sample, or a scorer that failed on it
            bar.update(1)
            bar.set_postfix(errors=errors, refresh=False)
    finally:
        # On Ctrl-C, drop the queued samples instead of waiting for all of them; `--resume` does them later.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def evaluate_sample(task: Task, config: TaskConfig, sample: Sample, epoch: int, model: CachedModel,
                    judge: CachedModel | None, run_id: str = "", db_path: str | None = None) -> SampleRecord:
    state = TaskState(sample, epoch, sample_seed(config.seed, sample.id, epoch))
    if sample.error:
        return _record(state, "error", sample.error, {})
    ctx = SolveContext(model.for_sample(state), judge.for_sample(state, "judge") if judge else None, config,
                       run_id, db_path)
    try:
        for solve in task.solvers:
            state = solve(state, ctx)
    except Exception as err:  # this sample's failure (endpoint down, bad data): recorded, the run goes on
        state.log("error", where="solver", message=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        return _record(state, "error", f"solver failed: {type(err).__name__}: {err}", {})
    scores: dict[str, dict[str, Any]] = {}
    for score_fn in task.scorers:
        name = scorer_name(score_fn)
        try:
            score = score_fn(state, ctx)
            if score.value is not None and math.isnan(score.value):
                raise ValueError("scorer returned NaN")
        except Exception as err:  # a broken scorer spoils only its own column for this sample
            state.log("error", where=f"scorer {name}", message=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc())
            score = Score(None, error=f"{type(err).__name__}: {err}")
        scores[name] = score.to_dict()
        state.log("score", scorer=name, **score.to_dict())
    return _record(state, "done", None, scores)


def _record(state: TaskState, status: str, error: str | None, scores: dict[str, dict[str, Any]]) -> SampleRecord:
    sample = asdict(state.sample)
    sample["metadata"] = {**sample["metadata"], "solver": _jsonable(state.metadata)}
    return SampleRecord(state.sample.id, state.epoch, status, sample, state.output, scores, state.events,
                        state.usage.to_dict(), error)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
