"""Byte and GPT-2 BPE tokenizers: known ids, exact round trips, JSON rebuilds, one-line errors."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptjax.data import ByteTokenizer, CharTokenizer, DataError, GPT2Tokenizer, bpe, tokenizer_from_json


@pytest.fixture(scope="module")
def gpt2_ranks():
    import os
    import pathlib

    root = os.environ.get("GPTJAX_DATA_DIR")
    path = pathlib.Path(root or "", "gpt2", "gpt2.tiktoken")
    if not root or not path.is_file():
        pytest.fail("GPT-2 ranks missing: set GPTJAX_DATA_DIR to the shared data (gpt2/gpt2.tiktoken)")
    return str(path)


@pytest.fixture(scope="module")
def gpt2(gpt2_ranks):
    return GPT2Tokenizer(gpt2_ranks)


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    assert gpt2.decode([15496, 995]) == "Hello world"
    # The special token's text is ordinary text: it never becomes id 50256 by accident.
    assert 50256 not in gpt2.encode("a<|endoftext|>b")
    assert gpt2.decode([50256]) == "<|endoftext|>"


def test_gpt2_tiny_shakespeare_counts_match_nanogpt(gpt2, data_dir):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()
    n = int(len(text) * 0.9)
    # nanoGPT's data/shakespeare/prepare.py: "train has 301,966 tokens", "val has 36,059 tokens".
    assert (len(gpt2.encode(text[:n])), len(gpt2.encode(text[n:]))) == (301_966, 36_059)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_gpt2_round_trip(gpt2, s):
    assert gpt2.decode(gpt2.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_round_trip(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(s.encode("utf-8"))
    assert tok.decode(ids) == s


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab\n XYZ!é", min_size=0))
def test_char_round_trip_over_its_vocab(s):
    tok = CharTokenizer("ab\n XYZ!é")
    assert tok.decode(tok.encode(s)) == s


def test_cut_multibyte_character_decodes_to_replacement(gpt2):
    assert ByteTokenizer().decode(list("é".encode())[:1]) == "\ufffd"
    ids = gpt2.encode("😀")
    assert len(ids) > 1 and gpt2.decode(ids[:1]) == "\ufffd"


@pytest.mark.parametrize("make", [ByteTokenizer, lambda: GPT2Tokenizer(None)])
def test_json_round_trip(make, gpt2_ranks):
    tok = make()
    again = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert type(again) is type(tok) and again.to_json() == tok.to_json()
    assert again.encode("It's 2024, naïve café!") == tok.encode("It's 2024, naïve café!")


def test_gpt2_resolution_order(gpt2_ranks, tmp_path, monkeypatch):
    assert GPT2Tokenizer(gpt2_ranks).to_json() == {"kind": "gpt2", "ranks": gpt2_ranks}
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(tmp_path))  # no ranks here: tiktoken's own cache comes next
    assert bpe.resolve_gpt2_ranks() == bpe.TIKTOKEN_SOURCE
    # A checkpoint whose saved ranks file moved searches again rather than failing.
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(gpt2_ranks).rsplit("/gpt2/", 1)[0])
    moved = tokenizer_from_json({"kind": "gpt2", "ranks": str(tmp_path / "gone.tiktoken")})
    assert moved.ranks == gpt2_ranks


def test_gpt2_offline_without_ranks_is_one_line(tmp_path, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setenv("GPTJAX_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataError, match="GPT-2's BPE ranks not found") as info:
        GPT2Tokenizer()
    assert "\n" not in str(info.value)


def test_bad_inputs_are_one_line(tmp_path):
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_bytes(b"YQ== 0\n")
    cases = [
        (lambda: GPT2Tokenizer(str(tmp_path / "missing")), "does not exist"),
        (lambda: GPT2Tokenizer(str(wrong)), "not GPT-2's BPE ranks"),
        (lambda: ByteTokenizer().decode([256]), "outside the vocab"),
        (lambda: ByteTokenizer().decode([[1]]), "1-D"),
        (lambda: tokenizer_from_json({"kind": "wordpiece"}), "unknown tokenizer kind"),
    ]
    for fn, match in cases:
        with pytest.raises(DataError, match=match) as info:
            fn()
        assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os
    import pathlib

    text = pathlib.Path(os.environ["GPTJAX_DATA_DIR"], "tinyshakespeare", "input.txt").read_text()[:100_000]
    corpus = tmp_path_factory.mktemp("bpe") / "corpus.txt"
    corpus.write_text(text)
    return bpe.train_bpe([str(corpus)], vocab_size=400), text


def test_trained_bpe_compresses_and_rebuilds(trained, tmp_path):
    from gptjax.data import load_tokenizer, save_tokenizer

    tok, text = trained
    assert tok.vocab_size == 400 and tok.eos_id == 0
    assert len(tok.encode(text)) < 0.6 * len(text.encode())  # merges learned from the corpus
    save_tokenizer(tok, tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.encode(text[:2000]) == tok.encode(text[:2000])


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_trained_bpe_round_trip(trained, s):
    tok = trained[0]
    assert tok.decode(tok.encode(s)) == s


def test_train_bpe_names_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "good.txt").write_text("hello world\n" * 10)
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    files = [str(tmp_path / "good.txt"), str(tmp_path / "latin1.txt")]
    with pytest.raises(
        DataError, match=r"latin1.txt is not valid UTF-8 \(invalid continuation byte at byte 3"
    ):
        bpe.train_bpe(files, vocab_size=300)


def test_gpt2_begins_and_ends_with_endoftext(gpt2):
    assert gpt2.bos_id == gpt2.eos_id == 50256  # GPT-2's config.json: bos_token_id = eos_token_id


def test_tiktoken_source_searches_the_data_dir_first(gpt2_ranks):
    """A checkpoint that loaded tiktoken's own ranks names TIKTOKEN_SOURCE; it still prefers the data dir."""
    assert bpe.resolve_gpt2_ranks(bpe.TIKTOKEN_SOURCE) == gpt2_ranks
    assert GPT2Tokenizer(bpe.TIKTOKEN_SOURCE).ranks == gpt2_ranks


def test_gpt2_from_json_keeps_a_ranks_file_that_still_exists(gpt2_ranks, tmp_path):
    elsewhere = tmp_path / "r50k.tiktoken"
    elsewhere.write_bytes(open(gpt2_ranks, "rb").read())
    again = tokenizer_from_json({"kind": "gpt2", "ranks": str(elsewhere)})
    assert again.ranks == str(elsewhere) and again.encode("Hello world") == [15496, 995]


def test_train_bpe_needs_room_for_the_bytes_and_endoftext(tmp_path):
    (tmp_path / "c.txt").write_text("hello world\n" * 20)
    match = r"vocab_size=256 is too small: the 256 bytes and <\|endoftext\|> need 257"
    with pytest.raises(DataError, match=match):
        bpe.train_bpe([str(tmp_path / "c.txt")], vocab_size=256)
    assert bpe.train_bpe([str(tmp_path / "c.txt")], vocab_size=257).vocab_size == 257  # just the bytes + EOT


def test_hf_tokenizer_without_its_eos_token_has_none(trained):
    tok = trained[0]
    assert (tok.eos_id, tok.bos_id, tok.eos_token) == (0, 0, bpe.GPT2_EOT)
    other = bpe.HFTokenizer(tok.to_json()["tokenizer"], eos="<|im_end|>")  # not in its vocab
    assert (other.eos_id, other.bos_id, other.eos_token) == (None, None, None)
    plain = bpe.HFTokenizer(tok.to_json()["tokenizer"], eos=None)
    assert (plain.eos_id, plain.eos_token) == (None, None)
