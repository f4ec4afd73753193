"""The WordPiece tokenizer: same ids as transformers' BertTokenizer, LXMERT's fixed length 20,
vocabularies trained on a corpus and saved, and the vocab_file trap avoided."""

import numpy as np
import pytest
import transformers

from model.errors import CheckpointError
from model.tokenizer import load_tokenizer, train_wordpiece

WORDS = ("a man riding a wave on top of a surfboard . two dogs play with a red frisbee in the grass "
         "what color is the cat ? is the sink full of water ? how many people are there 3:45 "
         "the kitchen has white cabinets and a stainless steel refrigerator").split()


def corpus(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 30))).capitalize() for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    tok = train_wordpiece(corpus(), directory, vocab_size=200, min_frequency=1)
    return tok, directory


def test_training_saves_a_bert_vocab_txt(trained):
    tok, directory = trained
    lines = (directory / "vocab.txt").read_text().splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) == tok.vocab_size and "surfboard" in lines
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)


def test_ids_match_transformers_bert_tokenizer(trained):
    tok, directory = trained
    reference = transformers.BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    texts = corpus(200, seed=1) + ["", "Unseen Wörds like ZEBRA-crossing at 3:45pm!", "x " * 40]
    ours = load_tokenizer(directory / "vocab.txt").encode_batch(texts)
    theirs = reference(texts, padding="max_length", truncation=True, max_length=20, return_tensors="np")
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])
    np.testing.assert_array_equal(ours.token_type_ids, 0)


def test_fixed_length_twenty_with_cls_and_sep(trained):
    tok, _ = trained
    batch = tok.encode_batch(["a man", "dog " * 50])
    assert batch.input_ids.shape == (2, 20) and batch.input_ids.dtype == np.int64
    assert tok.tokenize("A MAN") == ["a", "man"]
    assert batch.input_ids[0, :4].tolist() == [tok.cls_id, *tok.convert_tokens_to_ids(["a", "man"]), tok.sep_id]
    assert batch.input_ids[0, 4:].tolist() == [tok.pad_id] * 16
    assert batch.attention_mask[0].tolist() == [1] * 4 + [0] * 16
    # 18 WordPieces at most between [CLS] and [SEP]
    assert batch.input_ids[1, 0] == tok.cls_id and batch.input_ids[1, 19] == tok.sep_id
    assert batch.attention_mask[1].sum() == 20
    assert tok.encode_batch([]).input_ids.shape == (0, 20)


def test_count_truncated_counts_sentences_longer_than_what_a_sentence_keeps(trained):
    tok, _ = trained
    # 18 WordPieces fit between [CLS] and [SEP]; 19 do not; an unseen word is several pieces
    assert tok.count_truncated(["man " * 18, "man " * 19, "a man", ""]) == 1
    assert len(tok.tokenize("zebra")) > 1
    assert tok.count_truncated(["zebra " * 9]) == 1 and tok.count_truncated([]) == 0


def test_directory_with_tokenizer_json_and_vocab_round_trip(trained, tmp_path):
    tok, directory = trained
    again = load_tokenizer(directory)  # tokenizer.json
    texts = corpus(50, seed=3)
    np.testing.assert_array_equal(again.encode_batch(texts).input_ids, tok.encode_batch(texts).input_ids)
    tok.save(tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer.json").unlink()  # vocab.txt alone is enough
    np.testing.assert_array_equal(load_tokenizer(tmp_path / "saved").encode_batch(texts).input_ids,
                                  tok.encode_batch(texts).input_ids)


def test_vocab_file_trap_is_real_and_avoided(trained):
    """transformers 5.x BertTokenizerFast(vocab_file=) keeps 5 tokens and maps all to [UNK]."""
    tok, directory = trained
    trap = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    ids = trap("a man riding a wave")["input_ids"]
    assert trap.vocab_size < 10 and len(set(ids[1:-1])) == 1  # the trap, as documented
    ours = tok.encode_batch(["a man riding a wave"]).input_ids[0]
    assert tok.unk_id not in ours[:7].tolist()


def test_characters_missing_from_the_corpus_are_not_unk(tmp_path):
    tok = train_wordpiece(["a dog runs", "a cat sits"] * 50, vocab_size=100, min_frequency=1)
    assert tok.unk_id not in tok.convert_tokens_to_ids(tok.tokenize("3:45 - dog!"))


def test_bad_vocabularies_are_named(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(CheckpointError, match=r"vocab.txt: vocabulary lacks the special tokens \['\[CLS\]'"):
        load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(CheckpointError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(_empty(tmp_path))
    with pytest.raises(CheckpointError, match="no such vocabulary"):
        load_tokenizer(tmp_path / "missing" / "vocab.txt")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_special_token_text_keeps_its_attention_with_added_tokens(trained, tmp_path):
    """A hub-style tokenizer.json registers [PAD] etc. as added tokens; '[PAD]' typed in a
    sentence is then a real (attended) token, as in transformers."""
    from tokenizers import AddedToken

    tok, directory = trained
    backend = load_tokenizer(directory).backend
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")])
    backend.save(str(tmp_path / "tokenizer.json"))
    hub_like = load_tokenizer(tmp_path)
    batch = hub_like.encode_batch(["a [PAD] man"])
    assert batch.input_ids[0, 2] == hub_like.pad_id and batch.attention_mask[0, :5].tolist() == [1] * 5
    plain = tok.encode_batch(["a [PAD] man"])
    assert plain.attention_mask[0].sum() == len(tok.tokenize("a [PAD] man")) + 2
