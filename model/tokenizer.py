"""BERT uncased WordPiece for LXMERT's text side, through HuggingFace `tokenizers`.

- `load_tokenizer(source)`: a `vocab.txt`, a directory holding `tokenizer.json` or
  `vocab.txt`, or a hub name (only when online; nothing is downloaded otherwise).
  The vocabulary is read by `tokenizers`' own WordPiece, never by
  `BertTokenizerFast(vocab_file=...)`, which in transformers 5.x silently keeps a 5-token
  vocabulary and maps every word to [UNK].
- `train_wordpiece(texts, directory)`: a vocabulary learnt on the run's own corpus, saved
  as `vocab.txt` beside the run; the same corpus gives the same file byte for byte (see the
  function), and the saved file, not a re-training, is what later stages load.
- `LxmertTokenizer.encode_batch(texts)`: the reference's features (`[CLS]` + at most
  `max_seq_length - 2` WordPieces + `[SEP]`, zero-padded to exactly `max_seq_length`,
  segment ids 0) as int64 numpy arrays, batched in Rust.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import CheckpointError

MAX_SEQ_LENGTH = 20  # the reference's, [CLS] and [SEP] included
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_NAME = "vocab.txt"
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
TOKENIZER_NAME = "tokenizer.json"


@dataclass
class EncodedBatch:
    input_ids: np.ndarray        # (B, max_seq_length) int64
    attention_mask: np.ndarray   # (B, max_seq_length) int64, 1 on real tokens
    token_type_ids: np.ndarray   # (B, max_seq_length) int64, all 0

    def to_torch(self) -> dict:
        import torch
        return {k: torch.from_numpy(v) for k, v in vars(self).items()}


def _bert_pipeline(tokenizer, lowercase: bool = True):
    """Normaliser, pre-tokeniser, [CLS]/[SEP] template and decoder of BERT uncased."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors

    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise CheckpointError(f"vocabulary lacks the special tokens {missing}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


class LxmertTokenizer:
    """A `tokenizers.Tokenizer` fixed to LXMERT's use: uncased, truncate and pad to 20."""

    def __init__(self, backend, max_seq_length: int = MAX_SEQ_LENGTH, source: str | None = None):
        missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
        if missing:
            raise CheckpointError(f"vocabulary lacks the special tokens {missing}", source)
        if max_seq_length < 3:
            raise ValueError(f"max_seq_length must leave room for [CLS], a word and [SEP], got {max_seq_length}")
        self.backend = backend
        self.max_seq_length = max_seq_length
        self.source = source
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            backend.token_to_id(t) for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))
        # a configured copy for fixed-length batches; `backend` stays free for plain tokenize()
        self._fixed = backend.__class__.from_str(backend.to_str())
        self._fixed.enable_truncation(max_length=max_seq_length)
        self._specials_match_text = bool(backend.get_added_tokens_decoder())
        self._fixed.enable_padding(length=max_seq_length, pad_id=self.pad_id, pad_token="[PAD]")

    # ---- vocabulary ----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.backend.token_to_id(t) if self.backend.token_to_id(t) is not None else self.unk_id
                for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    # ---- encoding ------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """WordPieces without special tokens or truncation."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of `texts` have more WordPieces than a sentence keeps (max_seq_length - 2)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return sum(len(e.ids) > self.max_seq_length - 2 for e in encodings)

    def encode_batch(self, texts: Sequence[str]) -> EncodedBatch:
        """Fixed-length (B, max_seq_length) arrays: [CLS] w1..wk [SEP] [PAD]..., k <= max-2."""
        # encode_batch_fast skips character offsets (a third faster); [PAD] can only come from
        # padding unless the special tokens are registered as added tokens
        encode = getattr(self._fixed, "encode_batch_fast", self._fixed.encode_batch)
        encodings = encode(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), self.max_seq_length)
        if self._specials_match_text:  # e.g. a hub tokenizer.json: "[PAD]" in text is a token
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(ids.shape)
        else:
            mask = (ids != self.pad_id).astype(np.int64)
        return EncodedBatch(ids, mask, np.zeros_like(ids))

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    # ---- files ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """`vocab.txt` (BERT's format, readable by every BERT tokenizer) and `tokenizer.json`.

        Plain files: a caller that needs them to appear complete or not at all writes into
        a temporary directory and renames it (the pipeline does, docs/files.md).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self.get_vocab().items(), key=lambda item: item[1])
        (directory / VOCAB_NAME).write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
        (directory / TOKENIZER_NAME).write_text(self.backend.to_str(), encoding="utf-8")
        return directory / VOCAB_NAME

    def to_transformers(self):
        """A transformers tokenizer with the same vocabulary (for code that wants one)."""
        from transformers import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast(tokenizer_object=self.backend, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=self.max_seq_length)


def _from_vocab_file(path: Path):
    from tokenizers import Tokenizer, models

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"unreadable vocabulary ({err})", path) from None
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        token = token.rstrip("\r")
        if token in vocab:
            raise CheckpointError(f"line {index + 1}: token {token!r} appears twice", path)
        vocab[token] = index
    if not vocab:
        raise CheckpointError("empty vocabulary", path)
    try:
        return _bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)))
    except CheckpointError as err:
        raise CheckpointError(err.message, path) from None


def load_tokenizer(source: str | os.PathLike, max_seq_length: int = MAX_SEQ_LENGTH) -> LxmertTokenizer:
    """From a vocab.txt, a directory with tokenizer.json / vocab.txt, or a hub name (online)."""
    from tokenizers import Tokenizer

    path = Path(source)
    if path.is_dir():
        if (path / TOKENIZER_NAME).is_file():
            try:
                backend = Tokenizer.from_file(str(path / TOKENIZER_NAME))
            except Exception as err:  # noqa: BLE001 - tokenizers raises its own exception type
                raise CheckpointError(f"unreadable tokenizer ({err})", path / TOKENIZER_NAME) from None
            return LxmertTokenizer(backend, max_seq_length, str(path / TOKENIZER_NAME))
        if (path / VOCAB_NAME).is_file():
            return LxmertTokenizer(_from_vocab_file(path / VOCAB_NAME), max_seq_length, str(path / VOCAB_NAME))
        raise CheckpointError(f"no {TOKENIZER_NAME} or {VOCAB_NAME}", path)
    if path.is_file():
        return LxmertTokenizer(_from_vocab_file(path), max_seq_length, str(path))
    if os.sep in str(source) or str(source).endswith(".txt"):
        raise CheckpointError("no such vocabulary file or directory", source)
    try:  # a hub name such as "bert-base-uncased" (needs the network or a warm cache)
        from transformers import AutoTokenizer
        backend = AutoTokenizer.from_pretrained(str(source)).backend_tokenizer
    except Exception as err:  # noqa: BLE001 - offline, unknown name, ...
        raise CheckpointError(f"not a local vocabulary and not loadable from the hub "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:160]})", source) from None
    return LxmertTokenizer(backend, max_seq_length, str(source))


def train_wordpiece(texts: Iterable[str], directory: str | os.PathLike | None = None, *,
                    vocab_size: int = 30522, min_frequency: int = 2, max_seq_length: int = MAX_SEQ_LENGTH,
                    length: int | None = None) -> LxmertTokenizer:
    """Learn an uncased WordPiece vocabulary on `texts`; save it to `directory` if given.

    Letters, digits and punctuation are always in the alphabet, so times and scores
    ("3:45", "2-1") do not turn into [UNK] when the corpus lacks a character.

    The same texts give the same vocabulary in every process. `tokenizers`' trainer numbers
    the continuation pieces ("##e") in its hash map's iteration order, which is seeded per
    process, and breaks ties between equally frequent merges by those numbers, so the learnt
    pieces and their ids changed from run to run (docs/reference/ecosystem.md §4). Here every
    continuation piece of the corpus's characters is handed to the trainer up front, in
    character order, so every number it compares is fixed before training starts.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    texts = texts if isinstance(texts, Sequence) else list(texts)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + _continuation_pieces(texts, tokenizer.normalizer),
        continuing_subword_prefix="##", initial_alphabet=list(ALPHABET), show_progress=False)

    def batches(size: int = 1000):
        batch = []
        for text in texts:
            batch.append(text)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    tokenizer.train_from_iterator(batches(), trainer=trainer, length=length)
    # whatever the trainer kept, every alphabet character and its "##" piece stay in: without
    # "##5" a "45" is [UNK] (appended, so the ids of the rest stay)
    vocab = tokenizer.get_vocab()
    for char in ALPHABET:
        for piece in (char, "##" + char):
            if piece not in vocab:
                vocab[piece] = len(vocab)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    result = LxmertTokenizer(_bert_pipeline(tokenizer), max_seq_length, None)
    if directory is not None:
        result.save(directory)
        result.source = str(Path(directory) / VOCAB_NAME)
    return result


def _continuation_pieces(texts: Sequence[str], normalizer) -> list[str]:
    """"##c" for every character the trainer can meet in `texts` (after normalising) and
    every alphabet character, in character order."""
    raw: set[str] = set()
    for text in texts:
        raw.update(text)
    # the normaliser works character by character (lowercase, strip accents, clean), so
    # normalising the set of characters gives the characters of the normalised texts
    chars = set(normalizer.normalize_str("".join(sorted(raw)))) | set(ALPHABET)
    return ["##" + char for char in sorted(chars) if not char.isspace()]
