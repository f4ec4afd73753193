"""The tokenizer of a run: given by the user, inherited from the checkpoint a run starts
from, or learnt on the run's own corpus, and always saved with the run.

A learnt vocabulary depends on the corpus alone (the same sentences give the same file in
every process: `model.tokenizer.train_wordpiece`), so two fresh runs of one command learn
the same one. It is still learnt once: the saved files are what every later stage (resume,
fine-tuning from this run, evaluation, predict) loads, so a changed data root or tokenizers
release cannot change a run's vocabulary under it: `RUN/tokenizer/` and a copy in every
checkpoint directory, which makes `RUN/final/` a self-contained transformers-style directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from model.errors import CheckpointError
from model.tokenizer import MAX_SEQ_LENGTH, TOKENIZER_NAME, VOCAB_NAME, LxmertTokenizer, load_tokenizer, train_wordpiece
from pipeline.atomic import publish_directory
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


def find_tokenizer_dir(path: str | os.PathLike) -> Path | None:
    """The folder holding a tokenizer inside a run, a checkpoint or a plain folder, if any."""
    path = Path(path)
    for candidate in (path, path / TOKENIZER_DIR, path / "final"):
        if (candidate / TOKENIZER_NAME).is_file() or (candidate / VOCAB_NAME).is_file():
            return candidate
    return None


def load_run_tokenizer(path: str | os.PathLike, max_seq_length: int = MAX_SEQ_LENGTH) -> LxmertTokenizer:
    """The tokenizer saved with a run or checkpoint; one clear error when there is none."""
    found = find_tokenizer_dir(path)
    if found is None:
        raise PipelineError(f"no tokenizer ({VOCAB_NAME} or {TOKENIZER_NAME}) in the run, its "
                            f"{TOKENIZER_DIR}/ or final/ folder", path)
    try:
        return load_tokenizer(found, max_seq_length)
    except CheckpointError as err:
        raise PipelineError(str(err)) from None


def run_tokenizer(run_path: str | os.PathLike, *, vocab: str | os.PathLike | None = None,
                  corpus: Callable[[], Iterable[str]] | None = None, max_seq_length: int = MAX_SEQ_LENGTH,
                  vocab_size: int = 30522) -> LxmertTokenizer:
    """The tokenizer for the run at `run_path`, saved in `run_path/tokenizer/`.

    First match wins: the run's own saved tokenizer (a resumed run keeps its vocabulary);
    `vocab` (a vocab.txt, a folder with one, a run or checkpoint holding one, or a hub name);
    a WordPiece vocabulary learnt on `corpus()`.
    """
    target = Path(run_path) / TOKENIZER_DIR
    if find_tokenizer_dir(target) is not None:
        return load_run_tokenizer(target, max_seq_length)
    if vocab is not None:
        inside = find_tokenizer_dir(vocab) if Path(vocab).is_dir() else None
        try:
            tokenizer = load_tokenizer(inside or vocab, max_seq_length)
        except CheckpointError as err:
            raise PipelineError(str(err)) from None
        log.info("tokenizer: %d WordPieces from %s", tokenizer.vocab_size, inside or vocab)
    elif corpus is not None:
        texts = list(corpus())
        if not texts:
            raise PipelineError("no sentences to learn a vocabulary from (and no --vocab given)", run_path)
        tokenizer = train_wordpiece(texts, vocab_size=vocab_size, max_seq_length=max_seq_length)
        log.info("tokenizer: learnt %d WordPieces on %d sentences of the run's corpus", tokenizer.vocab_size,
                 len(texts))
    else:
        raise PipelineError("no tokenizer: pass a vocabulary (--vocab) or a corpus to learn one from", run_path)
    with publish_directory(target) as tmp:
        tokenizer.save(tmp)
    tokenizer.source = str(target / VOCAB_NAME)
    return tokenizer
