"""The pretraining stage: check the inputs, prepare the run, train through an executor.

    result = pretrain(features, data, out, preset="demo")                 # in this process
    result = pretrain(features, data, out, DaskExecutor(workers=2))      # DDP over two workers

`prepare_pretraining` does, in order (cheap checks first, so a bad call fails in a second):
the output directory is writable and not another run; the store opens and fits the model
preset; the data root has usable examples (annotations of images missing from the store
are counted, not errors); then the run's tokenizer (given or learnt), the answer table
(RUN/answers.json) and the examples (RUN/data/) are written. On `--resume` the run's own
recorded task is rebuilt instead, and only the store is checked against it.

Preparation resumes on its own. `RUN/data/preparation.json` records the inputs (the store's
checksums, the data root's annotation files by size and mtime, the vocabulary and answers
files, the preset and options) before anything is written, then each step as it completes:
the train split with the tokenizer and answer table before it, the grounding questions, the
valid split (a split's own mark is its summary.json, written last). A run stopped during
preparation, re-run into the same --out (with or without --resume: training has not
started), reuses every recorded step whose files are complete and redoes the rest; a
split caught half-written is written again. Other inputs than recorded: everything this
preparation wrote (RUN/data, RUN/answers.json, RUN/tokenizer) is prepared again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from model.configuration_lxmert import LxmertConfig
from pipeline.atomic import write_json
from pipeline.errors import PipelineError
from pipeline.finetune.tasks import training_sentences
from pipeline.inputs import check_store_fits, config_for_store, run_tokenizer
from pipeline.inputs.text import TOKENIZER_DIR, find_tokenizer_dir
from pipeline.pretraining import grounding
from pipeline.pretraining.examples import (ExampleCounts, answer_table, build_examples, is_complete, read_entries,
                                           source_names, usable_entries)
from pipeline.pretraining.options import PretrainOptions
from pipeline.pretraining.recipe import recipe
from pipeline.pretraining.job import ANSWERS, DATA_DIR, PretrainingJob
from pipeline.readers.answers import AnswerVocab
from pipeline.readers.data_root import IMAGE_EXTENSIONS
from pipeline.stages.executor import InProcess
from pipeline.stages.training import loop_settings, open_run, train_run
from pipeline.training import RunDir

log = logging.getLogger(__name__)

STORE_RECORD = "features_sha256"    # config.yaml: store_fingerprint of the run's feature store
PREPARATION = "preparation.json"     # RUN/data/: the preparation's inputs and completed steps


def _open_store(features: str | os.PathLike):
    from pipeline.features import FeatureStore
    return FeatureStore(features)


def prepare_pretraining(features: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
                        preset: str = "base", options: PretrainOptions | None = None,
                        vocab: str | os.PathLike | None = None, answers: str | os.PathLike | None = None,
                        resume: bool = False) -> tuple[PretrainingJob, dict[str, Any]]:
    """The task to train and a summary of its data (for config.yaml and the user)."""
    run = open_run(out, resume)
    if resume and run.has_run():
        return resumed_task(run, features), {}
    options = options or PretrainOptions()
    features, data = str(Path(features).resolve()), str(Path(data).resolve())
    store = _open_store(features)
    meta = store.metadata
    # the visual sizes do not depend on the vocabulary: check them before any slow step
    check_store_fits(_model_config(meta, preset, options, vocab_size=8), meta, features)

    names = grounding.detector_label_names(meta, data) if options.uses_grounding else None
    record = Preparation.open(run, _preparation_inputs(features, data, preset, options, vocab, answers, run))
    summary, tokenizer, answer_vocab, options = _prepare_train(run, record, store, data, options, names, vocab,
                                                               answers)
    if names is not None and not record.done("grounding"):
        grounding.write_questions(run.path / DATA_DIR / "train", names, tokenizer,
                                  {a: answer_vocab.label(a) for a in grounding.ANSWERS})
        record.complete("grounding", True)
    valid_dir = run.path / DATA_DIR / "valid"
    if record.done("valid") and (record.steps["valid"] is None or is_complete(valid_dir)):
        if record.steps["valid"] is not None:
            summary["valid"] = record.steps["valid"]
    else:
        valid = read_entries(data, "valid")
        shutil.rmtree(valid_dir, ignore_errors=True)
        if valid:
            usable_valid, valid_counts = usable_entries(valid, store.__contains__, summary["sources"],
                                                        options.val_max_images)
            if usable_valid:
                summary["valid"] = _write_split(run, "valid", usable_valid, summary["sources"], tokenizer,
                                                answer_vocab, valid_counts)
        record.complete("valid", summary.get("valid"))
    if "valid" not in summary:
        log.warning("%s: no validation split with features (COCO val2014 captions or lxmert/mscoco_minival.json)",
                    data)

    qa = dict(num_qa_labels=len(answer_vocab), answers=answer_vocab.answers) if answer_vocab else {}
    config = _model_config(meta, preset, options, vocab_size=tokenizer.vocab_size, **qa)
    check_store_fits(config, meta, features)
    specials = {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "mask": tokenizer.mask_id}
    task = PretrainingJob(run_path=str(run.path), features=features, data=data, preset=preset,
                        model_config=config.to_dict(), special_ids=specials, options=options)
    return task, summary


def _prepare_train(run: RunDir, record: "Preparation", store, data: str, options: PretrainOptions, names,
                   vocab, answers) -> tuple[dict[str, Any], Any, AnswerVocab | None, PretrainOptions]:
    """The train split with what it needs (tokenizer, answer table): (summary, tokenizer,
    answer table, options with the tasks the data allows), reused when an earlier attempt
    completed it."""
    step = record.steps.get("train")
    if (step is not None and is_complete(run.path / DATA_DIR / "train")
            and find_tokenizer_dir(run.path / TOKENIZER_DIR) is not None
            and (not step["answers"] or (run.path / ANSWERS).is_file())):
        log.info("pretraining train split: reusing the examples prepared in %s", run.path / DATA_DIR / "train")
        answer_vocab = AnswerVocab.load(run.path / ANSWERS) if step["answers"] else None
        if list(options.tasks) != step["tasks"]:   # QA dropped for want of answers
            options = options.replace(tasks=step["tasks"])
        return {"sources": step["sources"], "train": step["counts"]}, run_tokenizer(run.path), answer_vocab, options

    if record.steps:   # every later step depends on the train split's tokenizer and answers
        record.restart()
    shutil.rmtree(run.path / DATA_DIR / "train", ignore_errors=True)
    entries = read_entries(data, "train")
    if not entries:
        raise PipelineError("no pretraining annotations (COCO captions, VQA, VG, GQA or LXMERT's "
                            "lxmert/mscoco_train.json)", data)
    sources = source_names(entries, options.sources)
    if not sources:
        raise PipelineError(f"none of the sentence sources {options.sources} is in the data "
                            f"(found: {', '.join(source_names(entries, None))})", data)
    usable, counts = usable_entries(entries, store.__contains__, sources)
    if not usable:
        raise PipelineError(f"no usable pretraining examples: none of the {counts.missing_images} images of the "
                            f"annotations is in the feature store {store.directory}", data)

    # a learnt vocabulary must cover the warm-up's questions and the fine-tuning tasks' sentences
    # (learnt on captions and QA alone, NLVR2's "image", "contains", "exactly" fell apart into
    # letters and half the demo's statements lost their last words to the 20-piece limit)
    warmup_questions = [f(n) for n in names for f in (grounding.question, grounding.statement)] if names else []
    tokenizer = run_tokenizer(run.path, vocab=vocab, corpus=lambda: itertools.chain(
        (s for e in usable for src in sources for s in e.sentf.get(src, ())), warmup_questions,
        training_sentences(data)))
    answer_vocab = None
    if "qa" in options.tasks:
        qa_sources = [s for s in sources if any(s in e.labelf for e in usable)]
        answer_vocab = AnswerVocab.load(answers) if answers else answer_table(usable, qa_sources, options.max_answers)
        if names is not None:   # the warm-up's answers
            answer_vocab = AnswerVocab(answer_vocab.answers + [a for a in grounding.ANSWERS if a not in answer_vocab])
        if not len(answer_vocab):
            log.warning("no QA answers among the sources %s: pretraining without the QA task", sources)
            options = options.replace(tasks=[t for t in options.tasks if t != "qa"])
            answer_vocab = None
    if answer_vocab is not None:
        answer_vocab.save(run.path / ANSWERS)

    summary = {"sources": sources, "train": _write_split(run, "train", usable, sources, tokenizer, answer_vocab, counts)}
    record.complete("train", {"sources": sources, "counts": summary["train"], "tasks": list(options.tasks),
                              "answers": answer_vocab is not None})
    return summary, tokenizer, answer_vocab, options


class Preparation:
    """RUN/data/preparation.json: the inputs a run's data is prepared from and the steps
    completed, each recorded after its files are complete (module docstring)."""

    def __init__(self, path: Path, inputs: dict[str, Any], steps: dict[str, Any]):
        self.path, self.inputs, self.steps = path, inputs, steps

    @classmethod
    def open(cls, run: RunDir, inputs: dict[str, Any]) -> "Preparation":
        """The record of `run` for `inputs`: an earlier attempt's steps when it had the same
        inputs; otherwise a new record, after removing what an attempt with other inputs wrote."""
        path = run.path / DATA_DIR / PREPARATION
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            recorded, steps = found["inputs"], dict(found["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            found = recorded = None
        if found is not None and recorded == inputs:
            if steps:
                log.info("preparation of %s stopped before: reusing its completed steps (%s)", run.path,
                         ", ".join(steps))
            return cls(path, inputs, steps)
        if recorded is not None:
            changed = sorted(k for k in set(recorded) | set(inputs) if recorded.get(k) != inputs.get(k))
            log.warning("%s holds data prepared from other inputs (%s differ) by an attempt that stopped before "
                        "training: preparing again", run.path, ", ".join(changed))
            shutil.rmtree(run.path / DATA_DIR, ignore_errors=True)
            shutil.rmtree(run.path / TOKENIZER_DIR, ignore_errors=True)
            (run.path / ANSWERS).unlink(missing_ok=True)
        record = cls(path, inputs, {})
        record._write()
        return record

    def restart(self) -> None:
        self.steps = {}
        self._write()

    def done(self, step: str) -> bool:
        return step in self.steps

    def complete(self, step: str, value: Any) -> None:
        self.steps[step] = value
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"inputs": self.inputs, "steps": self.steps})


def _preparation_inputs(features: str, data: str, preset: str, options: PretrainOptions, vocab, answers,
                        run: RunDir) -> dict[str, Any]:
    """What the prepared data depends on, as plain json (compared as loaded back)."""
    inputs = {"features": features, "store": store_fingerprint(features), "data": data,
              "data_files": _files_digest(Path(data), skip=(run.path, Path(features))), "preset": preset,
              "options": options.to_dict(), "vocab": str(vocab) if vocab is not None else None,
              "vocab_files": _files_digest(Path(vocab)) if vocab is not None and Path(vocab).exists() else None,
              "answers": str(answers) if answers is not None else None,
              "answers_file": _files_digest(Path(answers)) if answers is not None and Path(answers).exists() else None}
    return json.loads(json.dumps(inputs))


def _files_digest(path: Path, skip: Sequence[Path] = ()) -> str:
    """sha256 over (relative path, size, mtime_ns) of a file, or of every file under a folder
    except images (`images/` and image files: preparation reads annotations only) and the
    folders `skip` (the run itself, the store: both change as they are used). Linked folders
    are followed (data roots often link their datasets in), each real folder once."""
    if path.is_file():
        st = path.stat()
        return hashlib.sha256(json.dumps([st.st_size, st.st_mtime_ns]).encode()).hexdigest()
    seen = {p.resolve() for p in skip}
    found = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        here = Path(folder)
        keep = []
        for d in sorted(dirs):
            real = (here / d).resolve()
            if not (here == path and d == "images") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                continue
            try:
                st = (here / name).stat()
            except OSError:
                continue
            found.append([str((here / name).relative_to(path)), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()


def _model_config(meta, preset: str, options: PretrainOptions, *, vocab_size: int, **sizes: Any) -> LxmertConfig:
    """The preset with the store's visual sizes, the task switches, then the user's `model:` overrides."""
    overrides = {**sizes, **options.model_flags(), **options.model}
    overrides.pop("vocab_size", None)   # always the tokenizer's
    return config_for_store(meta, preset, vocab_size=vocab_size, **overrides)


def _write_split(run: RunDir, split: str, entries, sources, tokenizer, answers, counts: ExampleCounts) -> dict:
    table = build_examples(entries, sources, tokenizer, answers, counts)
    table.save(run.path / DATA_DIR / split, counts)
    skipped = (f"; {counts.missing_sentences} sentences of {counts.missing_images} images skipped: "
               f"not in the feature store" if counts.missing_images else "")
    log.info("pretraining %s: %d examples of %d images (%s), %d with a QA answer%s", split, counts.examples,
             counts.images, ", ".join(f"{s} {n}" for s, n in counts.by_source.items()), counts.qa_examples, skipped)
    return counts.to_dict()


def resumed_task(run: RunDir, features: str | os.PathLike | None = None) -> PretrainingJob:
    """The task recorded in a run's config.yaml; `features` may name its store at another
    path (moved or copied), accepted only when it is the same store (`check_resumed_store`)."""
    record = run.read_config()
    if not isinstance(record, dict) or record.get("task") != "pretrain":
        raise PipelineError("not a pretraining run", run.path / "config.yaml")
    answers_path = run.path / ANSWERS
    answers = json.loads(answers_path.read_text(encoding="utf-8")) if answers_path.is_file() else None
    try:
        task = PretrainingJob.from_description(str(run.path), record["task_options"], answers)
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"the recorded pretraining task is incomplete ({err})", run.path / "config.yaml") from None
    task.features = check_resumed_store(run, record, str(Path(features).resolve()) if features else task.features)
    check_store_fits(task.config, _open_store(task.features).metadata, task.features)
    return task


def store_fingerprint(features: str | os.PathLike) -> str:
    """sha256 over a store's metadata and its shards' names, rows and checksums (as its
    manifest records them): the same for the same store wherever it lies, and different when
    any shard's bytes differ (the store's reader holds shards to these checksums)."""
    from pipeline.features import load_manifest

    manifest = load_manifest(features)
    shards = sorted((s["name"], s["num_rows"], s["sha256"]) for s in manifest["shards"])
    return hashlib.sha256(json.dumps([manifest["metadata"], shards], sort_keys=True).encode()).hexdigest()


def check_resumed_store(run: RunDir, record: dict, features: str) -> str:
    """`features` when it holds the store the run trained on (at its recorded path or moved);
    a moved store is recorded in config.yaml as the run's store from now on (the old path in
    `features_moved`). Anything else is one error line.

    A resumed run must go on with the features it started with: another store would change
    every step after the checkpoint while config.yaml named the first one."""
    recorded = record["task_options"]["features"]
    expected = record.get(STORE_RECORD)
    if features == recorded:
        if expected is not None and store_fingerprint(features) != expected:
            raise PipelineError(f"the feature store at {features} is not the one this run trained on (its shards' "
                                f"checksums differ from the run's record); pass the run's store with --features",
                                run.path / "config.yaml")
        return features
    if expected is None:   # a run from before the record: the old store itself, if it is still there
        try:
            expected = store_fingerprint(recorded)
        except PipelineError:
            raise PipelineError(f"--resume with --features {features}, but the run's store {recorded} is gone "
                                f"and the run records no checksum to compare with; pass the store at {recorded}",
                                run.path / "config.yaml") from None
    if store_fingerprint(features) != expected:
        raise PipelineError(f"--resume with --features {features}, a store other than the run's ({recorded}: "
                            f"their shards' checksums differ); pass the run's store, or start a new run with "
                            f"another --out", run.path / "config.yaml")
    log.info("the run's feature store now lives at %s (was %s): the same shards", features, recorded)
    moved = list(record.get("features_moved") or []) + [recorded]
    run.write_config({**record, "task_options": {**record["task_options"], "features": features},
                      STORE_RECORD: expected, "features_moved": moved})
    return features


def pretrain(features: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, executor=None, *,
             preset: str = "base", options: PretrainOptions | dict | None = None,
             vocab: str | os.PathLike | None = None, answers: str | os.PathLike | None = None,
             layers: Sequence[dict[str, Any]] = (), resume: bool = False,
             stop_after: int | None = None) -> dict[str, Any]:
    """Pretrain on the store `features` and the data root `data` into the run directory `out`.

    `executor`: where it trains (default: this process). `options`: `PretrainOptions` or
    their dict (a resumed run rebuilds its recorded task instead). `layers`: loop settings
    over the preset's recipe (training.py). Returns the loop's result with `summary`
    (examples per split, images missing from the store) and `objectives` (what was trained)."""
    from pipeline.errors import UsageError

    run = open_run(out, resume)
    if not (resume and run.has_run()):
        if preset not in model_preset_names():
            raise UsageError(f"unknown model preset {preset!r}; choose from {', '.join(model_preset_names())}")
        if not isinstance(options, PretrainOptions):
            try:
                options = PretrainOptions.from_dict(dict(options or {}))
            except (TypeError, ValueError) as err:
                raise UsageError(f"pretraining options: {err}") from None
    device = next((layer["device"] for layer in reversed(layers) if layer.get("device")), "cpu")
    config = loop_settings(run, resume, recipe(preset, device), layers)
    task, summary = prepare_pretraining(features, data, out, preset=preset, options=options, vocab=vocab,
                                        answers=answers, resume=resume)
    result = train_run(task, config, out, executor or InProcess(), resume=resume,
                       record={"data_summary": summary, STORE_RECORD: store_fingerprint(task.features)}
                       if summary else None, stop_after=stop_after,
                       inputs=[task.features, task.run_path])
    return {**result, "summary": summary, "objectives": list(task.options.tasks)}


def model_preset_names() -> list[str]:
    return sorted(LxmertConfig.PRESETS)
