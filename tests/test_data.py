"""Tests for gptjax.data: tokenizers, text sources, token caches and batches."""

import dataclasses
import hashlib
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptjax.data import (
    TINY_SHAKESPEARE_URL,
    CharTokenizer,
    DataError,
    get_batch,
    load_dataset,
    load_text,
    load_tokenizer,
    prepare_tokens,
    save_tokenizer,
    sources,
    tokenizer_from_json,
    tokens,
)

# nanoGPT's shakespeare_char/prepare.py: 90/10 character split of the 1,115,394-char corpus.
TS_TRAIN, TS_VAL = 1_003_854, 111_540


@pytest.fixture
def shakespeare(data_dir) -> pathlib.Path:
    path = data_dir / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.fail(f"{path} is missing; GPTJAX_DATA_DIR must hold the shared data")
    return path


# ---------------------------------------------------------------------------- tokenizers


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_char_tokenizer_round_trip(data):
    tok = CharTokenizer.from_text(data.draw(st.text(min_size=1), label="corpus"))
    text = data.draw(st.text(alphabet=st.sampled_from(tok.chars)), label="text")
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.uint16)) == text


def test_char_tokenizer_json_round_trip(tmp_path):
    tok = CharTokenizer("zyx\n é")  # Not sorted: the given order must survive.
    assert tokenizer_from_json(tok.to_json()).chars == tok.chars
    assert tok.to_json() == {"kind": "char", "chars": "zyx\n é"}
    save_tokenizer(tok, tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert loaded.encode("x é\n") == tok.encode("x é\n") == [2, 4, 5, 3]
    assert (loaded.bos_id, loaded.eos_id) == (None, None)
    with pytest.raises(DataError, match="unknown tokenizer kind 'bpe'"):
        tokenizer_from_json({"kind": "bpe"})


def test_char_tokenizer_rejects_unknown_chars():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError) as e:
        tok.encode("abXc\t")
    msg = str(e.value)
    assert "'X'" in msg
    assert "'\\t'" in msg
    assert "training corpus" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="and 5 more"):
        tok.encode("0123456789ABCDE")  # 15 unknown: 10 shown.
    with pytest.raises(DataError, match="outside the vocab"):
        tok.decode([0, -1])  # Would silently decode as 'c' without the check.
    with pytest.raises(DataError, match="duplicates"):
        CharTokenizer("aba")


def test_tiny_shakespeare_vocab(shakespeare):
    tok = CharTokenizer.from_text(shakespeare.read_text())
    assert tok.vocab_size == 65  # nanoGPT shakespeare_char's vocab size.
    assert tok.chars[:2] == "\n "


# ---------------------------------------------------------------------------- sources


def test_tiny_shakespeare_resolution_order(tmp_path, tmp_cache, monkeypatch):
    downloads = []

    def fake_download(url, dest, sha256=None):
        downloads.append((url, dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("downloaded")

    monkeypatch.setattr(sources, "_download", fake_download)
    data = tmp_path / "data"
    (data / "tinyshakespeare").mkdir(parents=True)
    (data / "tinyshakespeare" / "input.txt").write_text("from data dir")
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(data))
    cached = tmp_cache / "tinyshakespeare" / "input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("from cache")
    explicit = tmp_path / "mine.txt"
    explicit.write_text("explicit")

    assert load_text("tiny_shakespeare", str(explicit)) == "explicit"
    with pytest.raises(DataError, match="does not exist"):
        load_text("tiny_shakespeare", str(tmp_path / "nope.txt"))
    assert load_text("tiny_shakespeare") == "from data dir"
    (data / "tinyshakespeare" / "input.txt").unlink()
    assert load_text("tiny_shakespeare") == "from cache"
    assert downloads == []
    cached.unlink()
    assert load_text("tiny_shakespeare") == "downloaded"
    assert downloads == [(TINY_SHAKESPEARE_URL, cached)]
    assert load_text("tiny_shakespeare") == "downloaded"  # Now cached: no second download.
    assert len(downloads) == 1


def test_tiny_shakespeare_offline_error(tmp_path, tmp_cache, monkeypatch):
    def offline(url, dest, sha256=None):
        raise OSError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(sources, "_download", offline)
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(tmp_path))  # Exists but lacks the file.
    with pytest.raises(DataError) as e:
        load_text("tiny_shakespeare")
    msg = str(e.value)
    assert "\n" not in msg
    assert "GPTJAX_DATA_DIR" in msg
    assert str(tmp_cache) in msg
    assert TINY_SHAKESPEARE_URL in msg


def test_download_checks_sha256_and_writes_atomically(shakespeare, tmp_path):
    dest = tmp_path / "dl" / "input.txt"
    sources._download(shakespeare.as_uri(), dest, sha256=sources.TINY_SHAKESPEARE_SHA256)
    assert dest.read_bytes() == shakespeare.read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_text("<html>captive portal</html>")
    bad_dest = tmp_path / "dl" / "bad.txt"
    with pytest.raises(DataError, match="do not match sha256"):
        sources._download(bad.as_uri(), bad_dest, sha256=sources.TINY_SHAKESPEARE_SHA256)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["input.txt"]  # No partial files.


def test_load_text_files_and_globs(tmp_path):
    for name, text in [("b.txt", "B"), ("a.txt", "A"), ("c.txt", "C"), ("skip.md", "?")]:
        (tmp_path / name).write_text(text)
    (tmp_path / "dir.txt").mkdir()  # A directory matching the glob is not read.
    assert load_text(str(tmp_path / "*.txt")) == "ABC"
    assert load_text(str(tmp_path / "b.txt")) == "B"
    with pytest.raises(DataError, match="matches no files"):
        load_text(str(tmp_path / "*.csv"))
    with pytest.raises(DataError, match=r"neither a built-in corpus \['names', 'tiny_shakespeare'\] nor an"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="is a directory"):
        load_text(str(tmp_path))
    with pytest.raises(DataError, match=r"only used with a built-in source \['names', 'tiny_shakespeare'\]"):
        load_text(str(tmp_path / "a.txt"), path=str(tmp_path / "b.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_text(str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_text(str(tmp_path / "latin1.txt"))


# ---------------------------------------------------------------------------- tokens


def test_prepare_tokens_tiny_shakespeare(shakespeare, tmp_path, monkeypatch):
    text = shakespeare.read_text()
    tok = CharTokenizer.from_text(text)
    train, val = prepare_tokens(text, tok, cache_root=tmp_path)
    assert (len(train), len(val)) == (TS_TRAIN, TS_VAL)
    assert isinstance(train, np.memmap)
    assert train.dtype == val.dtype == np.uint16
    assert tok.decode(train[:100]) == text[:100]
    assert tok.decode(val[:100]) == text[TS_TRAIN : TS_TRAIN + 100]
    assert tok.decode(val[-10:]) == text[-10:]
    (cache,) = tmp_path.iterdir()  # One key dir, no temp dirs left behind.
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "train.bin", "val.bin"]

    def no_encode(text):
        raise AssertionError("the second call must reuse the cache, not re-encode")

    monkeypatch.setattr(tok, "encode", no_encode)
    train2, val2 = prepare_tokens(text, tok, cache_root=tmp_path)
    np.testing.assert_array_equal(train2, train)
    np.testing.assert_array_equal(val2, val)


def test_prepare_tokens_key_and_interrupted_write(tmp_path, monkeypatch):
    text = "hello world, " * 10
    tok = CharTokenizer.from_text(text)
    n = len(text)

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokens.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(text, tok, cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # The temp dir is cleaned up, no cache entry made.
    monkeypatch.undo()

    train, val = prepare_tokens(text, tok, cache_root=tmp_path)
    assert (len(train), len(val)) == (int(n * 0.9), n - int(n * 0.9))
    train, val = prepare_tokens(text, tok, val_fraction=0.5, cache_root=tmp_path)
    assert len(train) == len(val) == n // 2
    assert len(list(tmp_path.iterdir())) == 2  # val_fraction is part of the key.
    with pytest.raises(DataError, match="must be in"):
        prepare_tokens(text, tok, val_fraction=0.0, cache_root=tmp_path)


def test_prepare_tokens_key_includes_the_tokenizer(tmp_path):
    """Two tokenizers of one text get their own caches: ids from one are never read with the other."""
    text = "abcabcabcd" * 5
    for tok in (CharTokenizer("abcd"), CharTokenizer("dcba")):
        train, val = prepare_tokens(text, tok, cache_root=tmp_path)
        assert tok.decode(train) + tok.decode(val) == text
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_write_atomically_replaces_a_directory(tmp_path, monkeypatch, exchange):
    """Replacing a directory leaves the new contents and nothing else; a failure keeps the old one.
    On Linux the swap is one renameat2(RENAME_EXCHANGE): a kill can never find the data missing."""
    final = tmp_path / "data"
    final.mkdir()
    (final / "old.txt").write_text("old")
    if exchange == "two renames":
        monkeypatch.setattr(tokens, "_exchange", lambda a, b: False)
    elif sys.platform == "linux":
        renames = []
        monkeypatch.setattr(tokens.os, "rename", lambda *a: renames.append(a))
    with pytest.raises(RuntimeError, match="failed"), tokens.write_atomically(final) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("failed")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]

    with tokens.write_atomically(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temp or "-old" directory left
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    if exchange == "renameat2" and sys.platform == "linux":
        assert renames == []  # the swap went through renameat2, not the two-rename fallback


@pytest.mark.parametrize("vocab_size", [256, 50257, 65536, 65537, 100_000])
def test_token_dtype_holds_the_largest_id(vocab_size):
    dtype = tokens._token_dtype(vocab_size)
    assert int(np.array([vocab_size - 1]).astype(dtype)[0]) == vocab_size - 1
    if vocab_size <= 50257:  # GPT-2's ids fit in 2 bytes
        assert dtype == np.uint16


def test_load_dataset_from_file(tmp_path, tmp_cache):
    (tmp_path / "corpus.txt").write_text("abcabcabcd" * 10)
    ds = load_dataset(str(tmp_path / "corpus.txt"))
    assert ds.tokenizer.chars == "abcd"
    assert (len(ds.train), len(ds.val)) == (90, 10)
    assert ds.tokenizer.decode(ds.val) == "abcabcabcd"
    assert (tmp_cache / "tokens").is_dir()  # Default cache root honours $GPTJAX_CACHE_DIR.


def test_load_dataset_from_a_prepared_directory_keeps_its_splits(tmp_path):
    """train.bin is .train and val.bin .val: the lengths meta.json records, val the end of the text."""
    from gptjax.data.prepare import prepare_files

    text = "".join(f"line {i}\n" for i in range(50))
    (tmp_path / "t.txt").write_text(text)
    meta = prepare_files([tmp_path / "t.txt"], tmp_path / "out", CharTokenizer.from_text(text))
    ds = load_dataset(str(tmp_path / "out"))
    assert (len(ds.train), len(ds.val)) == (meta["train_tokens"], meta["val_tokens"])
    assert meta["train_tokens"] > meta["val_tokens"] > 0
    val_text = ds.tokenizer.decode(ds.val.tolist())
    assert text.startswith(ds.tokenizer.decode(ds.train.tolist())) and text.endswith(val_text)


def test_unknown_source_says_how_to_use_prepared_tokens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs/gpt2.py's source, before its tokens are prepared
    with pytest.raises(DataError, match=r"prepare_data.py --out_dir=DIR .* --config.data.source=DIR$"):
        load_dataset("openwebtext")


def test_prepared_data_needs_the_same_tokenizer(tmp_path, data_dir):
    from gptjax.data import GPT2Tokenizer
    from gptjax.data.prepare import prepare_files

    (tmp_path / "t.txt").write_text("abcabcabcd\n" * 10)
    prepare_files([tmp_path / "t.txt"], tmp_path / "chars", CharTokenizer("\nabcd"))
    assert load_dataset(str(tmp_path / "chars"), tokenizer=CharTokenizer("\nabcd")).tokenizer.chars
    with pytest.raises(
        DataError, match=r"tokenizer 'char' \(5 ids, sha256 \w{8}\), not the checkpoint's 'char'"
    ):
        load_dataset(str(tmp_path / "chars"), tokenizer=CharTokenizer("\nabce"))  # same size, other ids
    # GPT-2's ranks file may lie elsewhere on the machine that trains: only its contents count.
    prepare_files([tmp_path / "t.txt"], tmp_path / "gpt2", GPT2Tokenizer())
    (tmp_path / "r.tiktoken").write_bytes((data_dir / "gpt2" / "gpt2.tiktoken").read_bytes())
    assert load_dataset(str(tmp_path / "gpt2"), tokenizer=GPT2Tokenizer(str(tmp_path / "r.tiktoken")))


# ---------------------------------------------------------------------------- batches


def test_get_batch_is_deterministic_and_shifted():
    toks = np.arange(1000, dtype=np.uint16)  # Token value == position: shifts are easy to see.
    kw = {"batch_size": 8, "block_size": 16, "seed": 3}
    x, y = get_batch(toks, step=5, **kw)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    x2, y2 = get_batch(toks, step=5, **kw)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert not np.array_equal(get_batch(toks, step=6, **kw)[0], x)
    assert not np.array_equal(get_batch(toks, step=5, split="val", **kw)[0], x)
    assert not np.array_equal(get_batch(toks, step=5, batch_size=8, block_size=16, seed=4)[0], x)


def test_get_batch_offsets_cover_the_whole_range():
    toks = np.arange(10, dtype=np.uint16)
    starts = set()
    for step in range(50):
        x, y = get_batch(toks, batch_size=4, block_size=8, seed=0, step=step)
        starts.update(x[:, 0].tolist())
        assert y.max() <= 9
    assert starts == {0, 1}  # Offsets in [0, len - block_size - 1], both ends reached.


def test_get_batch_rejects_short_splits():
    with pytest.raises(DataError) as e:
        get_batch(np.arange(16), batch_size=2, block_size=16, seed=0, step=0, split="val")
    assert str(e.value) == (
        "val split has 16 tokens, fewer than block_size+1=17; "
        "lower config.model.block_size or use a larger corpus"
    )
    with pytest.raises(DataError, match="split='test'"):
        get_batch(np.arange(100), batch_size=2, block_size=16, seed=0, step=0, split="test")


# ---------------------------------------------------------------------------- audit additions


def test_char_tokenizer_lists_up_to_ten_unknown_characters_sorted():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError) as e:
        tok.encode("a9876543210")  # exactly 10 unknown, none of them "more"
    shown = ", ".join(repr(c) for c in "0123456789")
    assert f"text has 10 character(s) not in the tokenizer's vocab: {shown};" in str(e.value)
    assert "more" not in str(e.value)


def test_char_tokenizer_decode_refuses_the_id_past_its_vocab_and_2d_ids():
    tok = CharTokenizer("abc")
    assert tok.decode([2]) == "c"
    with pytest.raises(DataError, match=r"ids \[3\] are outside the vocab \[0, 3\)"):
        tok.decode([0, 3])
    with pytest.raises(DataError, match=r"1-D sequence of ids, got shape \(1, 2\)"):
        tok.decode([[0, 1]])


def test_load_text_reads_a_bracket_glob(tmp_path):
    for name, text in [("a.txt", "A"), ("b.txt", "B"), ("c.txt", "C")]:
        (tmp_path / name).write_text(text)
    assert load_text(str(tmp_path / "[ab].txt")) == "AB"


@pytest.mark.parametrize("name", ["tiny_shakespeare", "names"])
def test_a_builtin_download_that_fails_its_sha256_is_not_cached(tmp_path, tmp_cache, monkeypatch, name):
    """What a captive portal returns instead of the corpus is refused, never cached for later runs."""
    portal = tmp_path / "portal.html"
    portal.write_text("<html>log in to the wifi</html>")
    corpus = dataclasses.replace(sources.BUILTINS[name], url=portal.as_uri())
    monkeypatch.setitem(sources.BUILTINS, name, corpus)
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(tmp_path))  # exists but lacks the file
    with pytest.raises(DataError, match="do not match sha256"):
        load_text(name)
    assert not (tmp_cache / corpus.rel).exists()


def test_get_batch_takes_a_split_of_exactly_block_size_plus_one():
    toks = np.arange(9, dtype=np.uint16)
    x, y = get_batch(toks, batch_size=3, block_size=8, seed=0, step=0)
    np.testing.assert_array_equal(x, np.tile(np.arange(8), (3, 1)))  # the only window
    np.testing.assert_array_equal(y, x + 1)


def test_get_batch_seed_and_step_are_separate_keys():
    """(seed, step) = (0, 1) and (1, 0) draw different batches: seeds are not steps of one stream."""
    toks = np.arange(10_000, dtype=np.uint16)
    kw = {"batch_size": 8, "block_size": 4}
    for a, b in [((0, 1), (1, 0)), ((3, 5), (5, 3)), ((2, 7), (4, 5))]:
        xa = get_batch(toks, seed=a[0], step=a[1], **kw)[0]
        xb = get_batch(toks, seed=b[0], step=b[1], **kw)[0]
        assert not np.array_equal(xa, xb), (a, b)


def test_prepared_directory_keeps_the_given_tokenizer(tmp_path, data_dir):
    """A checkpoint's GPT-2 tokenizer reading prepared tokens stays itself (its ranks file), not the one
    meta.json recorded."""
    from gptjax.data import GPT2Tokenizer
    from gptjax.data.prepare import prepare_files

    (tmp_path / "t.txt").write_text("abcabcabcd\n" * 10)
    prepare_files([tmp_path / "t.txt"], tmp_path / "gpt2", GPT2Tokenizer())
    (tmp_path / "r.tiktoken").write_bytes((data_dir / "gpt2" / "gpt2.tiktoken").read_bytes())
    ranks = str(tmp_path / "r.tiktoken")
    assert load_dataset(str(tmp_path / "gpt2"), tokenizer=GPT2Tokenizer(ranks)).tokenizer.ranks == ranks


def test_prepare_tokens_refuses_a_text_too_short_for_both_splits(tmp_path):
    with pytest.raises(DataError, match="text of 1 characters leaves an empty split at val_fraction=0.1"):
        prepare_tokens("a", CharTokenizer("a"), cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_names_come_shuffled_so_that_val_is_a_sample(data_dir, tmp_cache):
    """The built-in names: every name of the shared file once, in a fixed random order, so that the last
    10% (val) spreads over the whole list (the file runs from the most popular name to the rarest)."""
    file = data_dir / "names" / "names.txt"
    assert hashlib.sha256(file.read_bytes()).hexdigest() == sources.NAMES_SHA256
    names = file.read_text().splitlines()
    text = load_text("names")
    assert text == load_text("names") and text.endswith("\n")
    shuffled = text.splitlines()
    assert sorted(shuffled) == sorted(names) and len(shuffled) == 32_033 and shuffled != names
    rank = {n: i for i, n in enumerate(names)}  # a name listed twice keeps its later rank
    val_ranks = [rank[n] for n in shuffled[int(0.9 * len(names)) :]]
    assert abs(np.mean(val_ranks) / len(names) - 0.5) < 0.05 and min(val_ranks) < 100
    assert load_text("names", str(file)) == text  # an explicit path gets the same order


def test_names_offline_error_says_where_to_put_the_file(tmp_path, tmp_cache, monkeypatch):
    def offline(url, dest, sha256=None):
        raise OSError("no network")

    monkeypatch.setattr(sources, "_download", offline)
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_text("names")
    assert str(e.value) == (
        f"could not download the names list (no network); put names.txt from {sources.NAMES_URL} at "
        f"$GPTJAX_DATA_DIR/names/names.txt or at {tmp_cache / 'names' / 'names.txt'}"
    )
