"""gptjax -> HF tokenizer files: transformers.AutoTokenizer loads GPT-2's and trained BPE tokenizers and
encodes as gptjax does, char/byte tokenizers write none, and an export replaces an earlier one whole.
(Split from test_convert.py, which tests the weights and configs.)
"""

import os
import pathlib
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptjax import convert, hf_tokenizer
from gptjax.data import ByteTokenizer, CharTokenizer, GPT2Tokenizer, bpe
from gptjax.model import GPT, GPTConfig


def tokens(cfg_or_vocab, T, B=2, seed=0):
    V = getattr(cfg_or_vocab, "vocab_size", cfg_or_vocab)
    return np.random.default_rng(seed).integers(0, V, size=(B, T), dtype=np.int32)


# ----- Tokenizer files: transformers.AutoTokenizer encodes as gptjax does. -----


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """(gptjax's GPT-2 tokenizer, transformers' AutoTokenizer of its exported files, seconds the export
    took, the directory)."""
    import transformers

    ranks = pathlib.Path(os.environ.get("GPTJAX_DATA_DIR", ""), "gpt2", "gpt2.tiktoken")
    if not ranks.is_file():
        pytest.fail("GPT-2 ranks missing: set GPTJAX_DATA_DIR to the shared data (gpt2/gpt2.tiktoken)")
    tok = GPT2Tokenizer(str(ranks))
    directory = tmp_path_factory.mktemp("gpt2_tokenizer")
    start = time.perf_counter()
    names = hf_tokenizer.save_hf_tokenizer(directory, tok, model_max_length=1024)
    seconds = time.perf_counter() - start
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    return tok, transformers.AutoTokenizer.from_pretrained(directory), seconds, directory


def test_gpt2_tokenizer_files(gpt2_export):
    tok, hf, seconds, directory = gpt2_export
    assert seconds < 10, seconds  # 50,000 merges rebuilt from the ranks (about 1 s)
    merges = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[:4] == ["#version: 0.2", "Ġ t", "Ġ a", "h e"] and len(merges) == 50_001  # GPT-2's own
    assert len(hf) == 50257 and hf.convert_ids_to_tokens([262, 50256]) == ["Ġthe", "<|endoftext|>"]
    assert hf.bos_token_id == hf.eos_token_id == hf.unk_token_id == tok.eos_id == 50256
    assert hf.model_max_length == 1024


# Pieces that exercise GPT-2's pre-tokenizer: contractions, digit runs, whitespace runs, punctuation,
# accents, CJK, emoji, and the special token's text.
PIECES = [
    *["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "n't", "'", "’s"],
    *["0", "42", " 2024", "3.14159", "1,000,000", "٣٤"],
    *[" ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u00a0", "\u3000"],
    *["Hello", " world", "naïve", " café", "日本語", "😀", "👩‍👩‍👧", "Ω", "!!", "...", "--", " <", "|"],
    bpe.GPT2_EOT,
]
TEXTS = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=12).map("".join)


def with_eot(tok, text):
    """gptjax's ids of `text` with <|endoftext|> as eos_id: its encode() reads the special token's text as
    ordinary text (bpe.GPT2Tokenizer.encode), HF's tokenizer as the token, so they agree on this."""
    ids = []
    for i, part in enumerate(text.split(bpe.GPT2_EOT)):
        ids += ([tok.eos_id] if i else []) + tok.encode(part)
    return ids


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_exported_gpt2_tokenizer_encodes_like_gptjax(gpt2_export, text):
    tok, hf = gpt2_export[:2]
    ids = with_eot(tok, text)
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == text


def test_exported_gpt2_tokenizer_encodes_every_latin1_character(gpt2_export):
    """Every code point below 256 (UTF-8 lead bytes C2, C3 and every continuation byte): vocab.json and
    merges.txt must spell each byte as HF's byte-level map does."""
    tok, hf = gpt2_export[:2]
    text = "".join(map(chr, range(256)))
    assert hf(text)["input_ids"] == tok.encode(text)


def test_trained_tokenizer_round_trips_and_char_byte_write_nothing(tmp_path, data_dir, capsys):
    import transformers

    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:50_000]
    (tmp_path / "corpus.txt").write_text(text)
    tok = bpe.train_bpe([str(tmp_path / "corpus.txt")], vocab_size=400)
    names = hf_tokenizer.save_hf_tokenizer(tmp_path / "hf", tok, model_max_length=64)
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(hf) == 400 and hf.eos_token_id == tok.eos_id == 0
    sample = text[-3000:] + " naïve 😀 1234<|endoftext|>  \n"
    assert hf(sample)["input_ids"] == tok.encode(sample) and hf.decode(tok.encode(sample)) == sample
    # Importing the directory again finds its tokenizer ("auto": no built-in one has 400 ids).
    assert hf_tokenizer.pick_tokenizer("auto", 400, tmp_path / "hf").encode(sample) == tok.encode(sample)
    with pytest.raises(
        ValueError, match="no built-in tokenizer has the model's 400 ids and the model has no"
    ):
        hf_tokenizer.pick_tokenizer("auto", 400, tmp_path)

    for other in (CharTokenizer("ab"), ByteTokenizer()):
        (tmp_path / other.kind).mkdir()
        assert hf_tokenizer.save_hf_tokenizer(tmp_path / other.kind, other, model_max_length=64) == []
        assert not list((tmp_path / other.kind).iterdir())
        notice = f"the {other.kind} tokenizer has no Hugging Face equivalent: no tokenizer files written"
        assert capsys.readouterr().out.splitlines() == [notice]


def test_export_replaces_an_earlier_export_whole_and_refuses_other_directories(tmp_path, monkeypatch):
    """Exporting again swaps the directory at once: no file of the earlier export outlives it (a stale
    tokenizer.json would be what AutoTokenizer loads), a killed export leaves the earlier one whole,
    and a directory holding anything else is refused, never replaced."""
    import json

    import safetensors.numpy

    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    bpe_tok = bpe.train_bpe([str(tmp_path / "corpus.txt")], vocab_size=280)
    out = tmp_path / "hf"

    def export(tok, seed):
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)
        convert.save_hf(out, GPT(cfg).init(jax.random.PRNGKey(seed), tokens(cfg, 4))["params"], cfg, tok)

    export(bpe_tok, 0)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "tokenizer.json" in first and set(first) <= set(convert.EXPORT_FILES)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(safetensors.numpy, "save_file", killed)
        with pytest.raises(KeyboardInterrupt):
            export(ByteTokenizer(), 1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "hf"]  # no temp directory left

    export(ByteTokenizer(), 1)  # the byte tokenizer has no HF files: the BPE's must not remain
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 256

    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files an HF export does not write \(notes.txt\)"):
        export(ByteTokenizer(), 2)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(NotADirectoryError, match="is a file"):
        convert.save_hf(out / "notes.txt", {}, None)
