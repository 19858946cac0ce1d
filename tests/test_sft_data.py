"""Tests for gptjax.data.sft: prompt/completion rows, their batches, cuts, splits, errors, Parquet shards."""

import importlib
import json
import math
import sys

import numpy as np
import pytest

from gptjax.data import ByteTokenizer, CharTokenizer, DataError, GPT2Tokenizer, chat, get_batch
from gptjax.data.from_config import check_format, load_data, make_tokenizer
from gptjax.data.sft import IGNORE, decode_rows, load_sft_dataset, masked, pack, read_examples

EXAMPLES = [
    ("Q: 2+2?\nA:", " 4"),
    ("Translate 'chat':", " cat\n"),
    ("", "no prompt here"),
    ("Hi", ""),  # an EOS-only completion where the tokenizer has one; replaced below where not
    ("Über", " naïve café ✓"),
]


def write_jsonl(path, examples, extra=None) -> str:
    lines = [json.dumps({"prompt": p, "completion": c, **(extra or {})}) for p, c in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def expected_xy(prompt_ids, completion_ids, block_size):
    """(x, y) of one example written out: y IGNORE on prompt targets and padding, x padded with 0."""
    ids = prompt_ids + completion_ids
    x = np.zeros(block_size, np.int32)
    y = np.full(block_size, IGNORE, np.int32)
    x[: len(ids)] = ids[:block_size]  # the last token is read too (its target is padding) if it fits
    for t in range(len(ids) - 1):  # x[t] predicts ids[t + 1], trained on when that is a completion token
        if t + 1 >= len(prompt_ids):
            y[t] = ids[t + 1]
    return x, y


def test_ignore_is_the_losss_ignore_value():
    from gptjax import lm_head

    assert IGNORE == lm_head.IGNORE


@pytest.mark.parametrize("kind", ["byte", "gpt2"])
def test_rows_decode_to_the_prompt_completion_and_eos(tmp_path, tmp_cache, data_dir, kind):
    tok = ByteTokenizer() if kind == "byte" else GPT2Tokenizer(str(data_dir / "gpt2" / "gpt2.tiktoken"))
    examples = EXAMPLES if tok.eos_id is not None else [*EXAMPLES[:3], ("Hi", "!"), EXAMPLES[4]]
    source = write_jsonl(tmp_path / "s.jsonl", examples, extra={"id": 7})  # other fields are ignored
    block_size = 40
    ds = load_sft_dataset(source, block_size=block_size, val_fraction=0.2, tokenizer=tok)
    rows = np.concatenate([ds.train, ds.val])
    assert rows.dtype == np.int32 and rows.shape == (len(examples), block_size + 1)
    assert ds.tokenizer is tok
    x_BT, y_BT = decode_rows(rows)
    eos = [] if tok.eos_id is None else [tok.eos_id]
    for row, x, y, (prompt, completion) in zip(rows, x_BT, y_BT, examples, strict=True):
        p, c = tok.encode(prompt), tok.encode(completion) + eos
        n = len(p) + len(c)
        np.testing.assert_array_equal(row[:n], np.concatenate([masked(p), c]).astype(np.int32))
        np.testing.assert_array_equal(row[n:], -1)  # padding: token 0, masked
        want_x, want_y = expected_xy(p, c, block_size)
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
        assert y[n - 2] == (tok.eos_id if eos else c[-1])  # the last target: EOS where there is one


def test_default_tokenizer_is_the_characters_of_prompts_and_completions(tmp_path, tmp_cache):
    source = write_jsonl(tmp_path / "s.jsonl", [("ab", "c"), ("b", "dd"), ("", "ea")])
    ds = load_sft_dataset(source, block_size=4, val_fraction=0.5)
    assert ds.tokenizer.chars == "abcde"
    x, y = decode_rows(ds.train[:1])
    np.testing.assert_array_equal(x, [[0, 1, 2, 0]])  # "ab" then "c", then padding (token 0)
    np.testing.assert_array_equal(y, [[IGNORE, 2, IGNORE, IGNORE]])  # only "c" is trained on (no EOS)


def test_get_batch_of_sft_rows_is_decode_rows_of_the_drawn_rows(tmp_path, tmp_cache):
    examples = [(f"prompt {i}:", f" answer {i}") for i in range(20)]
    ds = load_sft_dataset(write_jsonl(tmp_path / "s.jsonl", examples), block_size=24, val_fraction=0.1)
    kw = dict(batch_size=12, block_size=24, seed=5)
    x, y = get_batch(ds.train, step=3, **kw)
    assert x.dtype == y.dtype == np.int32 and x.shape == y.shape == (12, 24)
    all_x, all_y = decode_rows(ds.train)
    for xr, yr in zip(x, y, strict=True):
        (i,) = np.flatnonzero((all_x == xr).all(axis=1))  # the examples differ: one row matches
        np.testing.assert_array_equal(yr, all_y[i])
    assert (y == IGNORE).any() and (y >= 0).any()
    x2, y2 = get_batch(ds.train, step=3, **kw)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert not np.array_equal(get_batch(ds.train, step=4, **kw)[0], x)
    with pytest.raises(DataError, match=r"rows are 25 tokens, built for block_size=24, not 16"):
        get_batch(ds.train, batch_size=2, block_size=16, seed=0, step=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_get_batch_of_image_rows_is_unchanged(dtype):
    high = np.iinfo(dtype).max if dtype != np.uint32 else 2**31 - 1  # int32 holds every id batched
    rows = np.random.default_rng(0).integers(0, high, size=(9, 17), endpoint=True).astype(dtype)
    x, y = get_batch(rows, batch_size=6, block_size=16, seed=2, step=7, split="val")
    # What get_batch returned before SFT rows: the drawn rows, shifted.
    picked = np.random.default_rng([2, 7, 1]).integers(0, 9, size=6)
    want = rows[picked].astype(np.int32)
    np.testing.assert_array_equal(x, want[:, :-1])
    np.testing.assert_array_equal(y, want[:, 1:])


def test_text_lines_are_trained_on_whole(tmp_path, tmp_cache):
    """{"text": ...} lines (TRL's language-modeling format) beside pairs: an empty prompt, every target
    trained on up to the padding; a line with a prompt and a text is a pair missing its completion."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "hello"}\n{"prompt": "q", "completion": "a"}\n{"text": "bye", "id": 3}\n')
    ds = load_sft_dataset(path, block_size=7, val_fraction=0.34, tokenizer=ByteTokenizer())
    x, y = decode_rows(ds.train[:1])
    assert bytes(x[0, :5].tolist()) == b"hello"
    np.testing.assert_array_equal(y[0], [*b"ello", IGNORE, IGNORE, IGNORE])  # no EOS: bytes have none
    assert bytes(decode_rows(ds.val[-1:])[0][0, :3].tolist()) == b"bye"
    path.write_text('{"prompt": "q", "text": "a"}\n')
    with pytest.raises(
        DataError, match=r's\.jsonl:1: "completion" is missing; .* \(or \{"text": "..."\}, or \{"messages"'
    ):
        load_sft_dataset(path, block_size=7, val_fraction=0.5, tokenizer=ByteTokenizer())


def test_long_examples_lose_the_prompt_start_then_the_completion_end(tmp_path, tmp_cache):
    examples = [
        ("abcdefghij", "XY"),  # prompt cut: 6 of its 10 tokens fit beside the completion
        ("p", "0123456789"),  # completion cut: the last prompt token stays, then 7 completion tokens
        ("", "0123456789"),  # no prompt: the first 8 completion tokens
        ("abcd", "WXYZ"),  # exactly block_size + 1: not cut
        ("ok", "fine"),
    ]
    source = write_jsonl(tmp_path / "s.jsonl", examples)
    with pytest.warns(
        UserWarning, match=r"3 of 5 examples .* 1 lost the start of the prompt only, 2 the end"
    ):
        ds = load_sft_dataset(source, block_size=7, val_fraction=0.2, tokenizer=ByteTokenizer())
    rows = np.concatenate([ds.train, ds.val])
    text = lambda row: bytes(np.where(row < 0, -row - 1, row).tolist()).decode()  # noqa: E731
    assert [text(r) for r in rows[:4]] == ["efghijXY", "p0123456", "01234567", "abcdWXYZ"]
    np.testing.assert_array_equal(rows[0] < 0, [True] * 6 + [False] * 2)
    np.testing.assert_array_equal(rows[1] < 0, [True] + [False] * 7)
    assert (rows[2] >= 0).all()


def test_short_examples_do_not_warn(tmp_path, tmp_cache, recwarn):
    load_sft_dataset(write_jsonl(tmp_path / "s.jsonl", [("a", "b")] * 3), block_size=1, val_fraction=0.5)
    assert not recwarn.list


@pytest.mark.parametrize("n, val_fraction, n_train", [(10, 0.1, 9), (10, 0.25, 7), (3, 0.1, 2), (2, 0.5, 1)])
def test_val_split_is_the_last_examples(tmp_path, tmp_cache, n, val_fraction, n_train):
    examples = [("", f"{i:02d}") for i in range(n)]
    source = write_jsonl(tmp_path / "s.jsonl", examples)
    ds = load_sft_dataset(source, block_size=2, val_fraction=val_fraction, tokenizer=ByteTokenizer())
    assert (len(ds.train), len(ds.val)) == (n_train, n - n_train)
    numbers = [bytes(r[:2].tolist()).decode() for r in np.concatenate([ds.train, ds.val])]
    assert numbers == [c for _, c in examples]  # file order: train first, val the last lines


def test_read_examples_skips_blank_lines_and_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    lines = [
        "",
        '{"prompt": "a", "completion": "b", "x": 1}',
        "",
        "  ",
        '{"prompt": "", "completion": "\u2028"}',
    ]
    (tmp_path / "s.jsonl").write_text("\n".join(lines))  # a raw U+2028 in a JSON string: not a line break
    assert read_examples("~/s.jsonl") == [[("a", False), ("b", True)], [("", False), ("\u2028", True)]]


OK = '{"prompt": "a", "completion": "b"}'
BAD_FILES = [  # (the file's lines, the error's pattern)
    ([OK, "", '{"prompt": "a",'], r"s\.jsonl:3: not JSON \(.* at column \d+\); write one object per line"),
    ([OK, '{"prompt": "a"}'], r's\.jsonl:2: "completion" is missing; every line needs'),
    (['{"prompt": 3, "completion": "b"}'], r's\.jsonl:1: "prompt" is int, not a string'),
    (['["a", "b"]'], r"s\.jsonl:1: a JSON list, not an object"),
    (["", "  "], r"s\.jsonl holds no examples"),
    ([OK], r"1 example\(s\), which leaves 0 for train and 1 for val .* change --config.data.val_fraction$"),
    (
        [OK, '{"prompt": "a", "completion": ""}'],
        r"s\.jsonl:2: nothing to train on: the completion gives 0 token\(s\) \(the tokenizer has no EOS\)",
    ),
    (['{"prompt": "", "completion": "b"}', OK], r"s\.jsonl:1: nothing to train on"),
]


@pytest.mark.parametrize("lines, pattern", BAD_FILES)
def test_bad_files_give_one_line_naming_the_line(tmp_path, tmp_cache, lines, pattern):
    (tmp_path / "s.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataError, match=pattern) as e:
        load_sft_dataset(str(tmp_path / "s.jsonl"), block_size=8, val_fraction=0.5)
    assert "\n" not in str(e.value)


def test_characters_outside_a_char_tokenizer_name_the_line(tmp_path, tmp_cache):
    source = write_jsonl(tmp_path / "s.jsonl", [("ab", "ba"), ("ab", "zz")])
    with pytest.raises(
        DataError, match=r"s\.jsonl:2: text has 1 character\(s\) not in the tokenizer's vocab: 'z'"
    ):
        load_sft_dataset(source, block_size=8, val_fraction=0.5, tokenizer=CharTokenizer("ab"))


def test_missing_file_and_unset_source(tmp_path, tmp_cache):
    with pytest.raises(DataError, match=r"nope\.jsonl does not exist; fix --config.data.source"):
        load_sft_dataset(str(tmp_path / "nope.jsonl"), block_size=8, val_fraction=0.1)
    with pytest.raises(DataError, match=r"^data.source is not set; pass --config.data.source=FILE.jsonl$"):
        load_sft_dataset(None, block_size=8, val_fraction=0.1)


def sft_config(variant, source):
    config = importlib.import_module("configs.sft").get_config(variant)
    config.data.source = source
    return config


@pytest.mark.parametrize("variant, kind, block_size", [("tiny", "char", 32), (None, "gpt2", 1024)])
def test_load_data_with_the_sft_config(tmp_path, tmp_cache, data_dir, variant, kind, block_size):
    examples = [(f"Q{i}: how many?", f" {i} of them") for i in range(30)]
    config = sft_config(variant, write_jsonl(tmp_path / "s.jsonl", examples))
    # The default variant's "auto" tokenizer is its init_from model's: GPT-2's BPE for gpt2.
    assert config.data.tokenizer == ("char" if variant else "auto")
    tokenizer = (
        make_tokenizer(config.data) if variant else GPT2Tokenizer(str(data_dir / "gpt2" / "gpt2.tiktoken"))
    )
    ds = load_data(config.data, tokenizer, block_size=config.model.block_size)
    assert config.model.block_size == block_size and ds.tokenizer.kind == kind
    assert ds.train.shape == (27, block_size + 1) and ds.val.shape == (3, block_size + 1)
    assert ds.train.dtype == ds.val.dtype == np.int32
    with pytest.raises(ValueError, match="load_data needs block_size"):
        load_data(config.data, None)


def test_sft_configs_pass_the_training_loop_checks():
    from gptjax.loop_checks import check_loop

    for variant in ("tiny", None):
        config = sft_config(variant, "s.jsonl")
        assert check_loop(config) == config.steps_per_call == 10
    with pytest.raises(ValueError, match="unknown variant 'big' of configs/sft.py"):
        sft_config("big", "s.jsonl")


def test_load_data_refuses_an_unknown_format(tmp_path):
    config = sft_config("tiny", str(tmp_path / "s.jsonl"))
    config.data.format = "chat"
    with pytest.raises(
        ValueError,
        match=r"^data.format='chat' is unknown; use one of "
        r"\['text', 'prompt_completion', 'preference', 'prompt'\]$",
    ):
        load_data(config.data, None, block_size=32)
    config.data.format = "prompt"  # GRPO's prompts: read by its loop, which samples their completions
    (tmp_path / "s.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"^data.format='prompt' holds prompts for GRPO"):
        load_data(config.data, None, block_size=32)


# ----- Packing (data.packing: several examples per row). -----


def test_pack_is_best_fit_decreasing():
    """Lengths 2, 6, 4, 3, 5, 3 into rows of 8, longest first, each into the fullest row with room:
    6 -> row 0 (2 left), 5 -> row 1 (3 left), 4 -> row 2 (4 left), 3 -> row 1 (full), 3 -> row 2 (1
    left), 2 -> row 0 (full). Each row lists its examples in file order."""
    lengths = [2, 6, 4, 3, 5, 3]
    examples = [np.full(n, i + 1, np.int32) for i, n in enumerate(lengths)]  # example i's tokens: i + 1
    rows = pack(examples, 8)
    assert rows.shape == (3, 2, 8) and rows.dtype == np.int32
    tokens = np.where(rows[:, 0] < 0, -rows[:, 0] - 1, rows[:, 0])
    np.testing.assert_array_equal(
        tokens, [[1, 1, 2, 2, 2, 2, 2, 2], [4, 4, 4, 5, 5, 5, 5, 5], [3, 3, 3, 3, 6, 6, 6, 0]]
    )
    np.testing.assert_array_equal(
        rows[:, 1], [[1, 1, 2, 2, 2, 2, 2, 2], [1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 2, 2, 2, 0]]
    )
    # Each example's first value and the padding are masked (never targets); the rest are kept as given.
    starts = np.diff(rows[:, 1], prepend=-1, axis=1) != 0
    np.testing.assert_array_equal(rows[:, 0] < 0, starts | (rows[:, 1] == 0))


def test_packed_rows_hold_every_example_once(tmp_path, tmp_cache):
    """Random lengths (some cut to the row): decoding each segment gives back each example of its split,
    masks and all except its first value, which is masked; in near the fewest rows possible."""
    rng = np.random.default_rng(0)
    examples = [
        (
            "".join(rng.choice(list("abc"), rng.integers(0, 9))),
            "".join(rng.choice(list("xyz"), rng.integers(2, 14))),
        )
        for _ in range(60)
    ]
    source = write_jsonl(tmp_path / "s.jsonl", examples)
    tok = ByteTokenizer()
    with pytest.warns(UserWarning, match="were cut"):
        padded = load_sft_dataset(source, block_size=15, val_fraction=0.2, tokenizer=tok)
    with pytest.warns(UserWarning, match="were cut"):
        packed = load_sft_dataset(source, block_size=15, val_fraction=0.2, tokenizer=tok, packing=True)
    for split in ("train", "val"):
        rows, padded_rows = getattr(packed, split), getattr(padded, split)
        assert rows.ndim == 3 and rows.shape[1:] == (2, 16)
        # Best-fit decreasing needs at most 11/9 of the fewest rows possible, plus 1 (Dosa 2007);
        # the fewest possible is at least the examples' total length / 16.
        total = int(np.sum(padded_rows != masked(0)))  # the examples' values (padding is masked 0)
        assert len(rows) < len(padded_rows) and len(rows) <= 11 / 9 * math.ceil(total / 16) + 1
        got = sorted(
            tuple(row[0][row[1] == s])
            for row in rows
            for s in np.unique(row[1])
            if s  # segment 0: padding
        )
        want = []
        for r in padded_rows:
            values = r[: np.flatnonzero(r != masked(0)).max() + 1].copy()  # drop the padding
            values[0] = values[0] if values[0] < 0 else masked(values[0])
            want.append(tuple(values))
        assert got == sorted(want)
    # The same file packs the same way (batches drawn from rows stay a function of (seed, step)).
    with pytest.warns(UserWarning, match="were cut"):
        again = load_sft_dataset(source, block_size=15, val_fraction=0.2, tokenizer=tok, packing=True)
    np.testing.assert_array_equal(again.train, packed.train)


def test_get_batch_of_packed_rows_adds_their_segments(tmp_path, tmp_cache):
    examples = [(f"p{i}:", f"answer {i}") for i in range(30)]
    ds = load_sft_dataset(
        write_jsonl(tmp_path / "s.jsonl", examples), block_size=24, val_fraction=0.1, packing=True
    )
    x, y, segments = get_batch(ds.train, batch_size=5, block_size=24, seed=1, step=2)
    assert x.shape == y.shape == segments.shape == (5, 24) and segments.dtype == np.int32
    picked = ds.train[np.random.default_rng([1, 2, 0]).integers(0, len(ds.train), size=5)]
    want_x, want_y = decode_rows(picked[:, 0])
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(segments, picked[:, 1, :-1])
    # Where the next token starts another example (or the padding), it is not a target.
    np.testing.assert_array_equal(y[segments != picked[:, 1, 1:]], IGNORE)
    with pytest.raises(DataError, match=r"rows are 25 tokens, built for block_size=24, not 16"):
        get_batch(ds.train, batch_size=2, block_size=16, seed=0, step=0)


def test_packing_a_text_corpus_is_refused(tmp_path):
    config = sft_config("tiny", str(tmp_path / "s.jsonl"))
    config.data.format = "text"
    config.data.packing = True
    with pytest.raises(
        ValueError, match=r"^data.packing packs prompt/completion examples, not data.format='text'"
    ):
        load_data(config.data, None)


# ----- Conversations ({"messages": [...]}, ChatML). -----

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, surely."},
]


def write_conversations(path, conversations) -> str:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations), encoding="utf-8")
    return str(path)


def test_conversations_are_chatml_trained_on_the_assistant_turns(tmp_path, tmp_cache):
    source = write_conversations(tmp_path / "c.jsonl", [CONVERSATION, CONVERSATION[1:3]])
    ds = load_sft_dataset(source, block_size=200, val_fraction=0.5, tokenizer=ByteTokenizer())
    (row,) = ds.train
    text = bytes(np.where(row < 0, -row - 1, row).tolist()).rstrip(b"\0").decode()
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n6, surely.<|im_end|>\n"
    )
    trained = bytes(np.where(row >= 0, row, ord("_")).tolist()).decode().strip("_")
    # Only each answer and the <|im_end|> after it are targets (_: read only).
    assert (
        trained
        == "4<|im_end|>"
        + "_" * len("\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
        + "6, surely.<|im_end|>"
    )


def test_generation_prompt_is_what_training_reads_before_an_answer(tmp_path, tmp_cache, data_dir):
    """The prompt a served model gets (chat.generation_prompt) tokenizes to the read-only tokens a
    trained row has before its first answer, with GPT-2's BPE."""
    tok = GPT2Tokenizer(str(data_dir / "gpt2" / "gpt2.tiktoken"))
    source = write_conversations(tmp_path / "c.jsonl", [CONVERSATION, CONVERSATION])
    (row,) = load_sft_dataset(source, block_size=256, val_fraction=0.5, tokenizer=tok).train
    first_answer = int(np.argmax(row >= 0))
    assert tok.encode(chat.generation_prompt(CONVERSATION[:2])) == list(-row[:first_answer] - 1)
    assert tok.decode(row[first_answer : first_answer + 1].tolist()) == "4"


def test_long_conversations_lose_their_opening_then_their_end(tmp_path, tmp_cache):
    long_system = [{"role": "system", "content": "x" * 200}, *CONVERSATION[1:3]]
    long_answer = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * 150}]
    conversations = [long_system, long_answer, CONVERSATION[1:3]]
    source = write_conversations(tmp_path / "c.jsonl", conversations)
    with pytest.warns(
        UserWarning, match=r"2 of 3 examples .* 1 lost the start of the prompt only, 1 the end"
    ):
        ds = load_sft_dataset(source, block_size=127, val_fraction=0.3, tokenizer=ByteTokenizer())
    text = lambda row: bytes(np.where(row < 0, -row - 1, row).tolist()).decode()  # noqa: E731
    end = "x<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    assert text(ds.train[0]).endswith(end) and text(ds.train[0]).startswith("xxx")
    # The opening's last token stays (the first answer token is a target), then the answer loses its end.
    assert text(ds.train[1]) == "\n" + "y" * 127
    np.testing.assert_array_equal(ds.train[1] < 0, [True] + [False] * 127)


BAD_CONVERSATIONS = [
    ('{"messages": []}', r"c\.jsonl:1: messages must be a non-empty list of \{role, content\}"),
    (
        '{"messages": [{"role": "bot", "content": "hi"}]}',
        r"c\.jsonl:1: message 0 is .*'bot'.* not \{\"role\": one of",
    ),
    ('{"messages": [{"role": "user", "content": 3}]}', r"c\.jsonl:1: message 0 is"),
    (
        '{"messages": [{"role": "user", "content": "hi"}]}',
        r"c\.jsonl:1: nothing to train on: no assistant message",
    ),
]


@pytest.mark.parametrize("line, pattern", BAD_CONVERSATIONS)
def test_bad_conversations_give_one_line_naming_the_line(tmp_path, tmp_cache, line, pattern):
    (tmp_path / "c.jsonl").write_text(line + "\n" + json.dumps({"messages": CONVERSATION}) + "\n")
    with pytest.raises(DataError, match=pattern) as e:
        load_sft_dataset(str(tmp_path / "c.jsonl"), block_size=64, val_fraction=0.5)
    assert "\n" not in str(e.value)


# ----- Parquet files, globs and directories (a Hugging Face dataset's shards). -----


def write_parquet(path, records) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)  # several row groups
    return str(path)


def write_records(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


HUB_RECORDS = {  # each as a Hub dataset holds them, with columns the format does not use
    "pairs": [{"prompt": f"q{i}?", "completion": f" a{i}", "prompt_id": f"id{i}"} for i in range(5)],
    "text": [{"text": f"line {i}", "score": i / 2} for i in range(5)],
    # ultrachat_200k's columns: a "prompt" beside the "messages" (no "completion": a conversation)
    "messages": [
        {"prompt": c[1]["content"], "prompt_id": str(i), "messages": c}
        for i, c in enumerate([CONVERSATION, CONVERSATION[1:3], CONVERSATION[1:]] * 2)
    ],
}


@pytest.mark.parametrize("kind", HUB_RECORDS)
def test_a_parquet_file_gives_the_examples_of_its_json_lines_twin(tmp_path, tmp_cache, kind):
    records = HUB_RECORDS[kind]
    parquet = write_parquet(tmp_path / "s.parquet", records)
    jsonl = write_records(tmp_path / "s.jsonl", records)
    assert read_examples(parquet) == read_examples(jsonl)
    a, b = (load_sft_dataset(s, block_size=200, val_fraction=0.4) for s in (parquet, jsonl))
    assert a.tokenizer.to_json() == b.tokenizer.to_json()
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    if kind == "messages":  # list<struct> rows are the conversations, their "prompt" column unused
        assert read_examples(parquet)[1] == chat.render(CONVERSATION[1:3])


@pytest.mark.parametrize("packing", [False, True])
def test_shards_by_glob_or_directory_equal_one_concatenated_file(tmp_path, tmp_cache, packing):
    records = [{"prompt": f"{i}>", "completion": "x" * (i % 4 + 1), "n": i} for i in range(10)]
    shards = tmp_path / "data"
    shards.mkdir()
    write_parquet(shards / "train-00001-of-00002.parquet", records[6:])  # written first, read second
    write_parquet(shards / "train-00000-of-00002.parquet", records[:6])
    (shards / "README.md").write_text("not data")
    whole = write_records(tmp_path / "all.jsonl", records)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_records(mixed / "a.jsonl", records[:3])
    write_parquet(mixed / "b.parquet", records[3:])
    sources = [str(shards / "train-*.parquet"), str(shards), str(mixed / "[ab].*")]
    want = load_sft_dataset(
        whole, block_size=8, val_fraction=0.25, tokenizer=ByteTokenizer(), packing=packing
    )
    assert packing or len(want.val) == 3  # the val split starts inside the second file
    for source in sources:
        got = load_sft_dataset(
            source, block_size=8, val_fraction=0.25, tokenizer=ByteTokenizer(), packing=packing
        )
        np.testing.assert_array_equal(got.train, want.train)
        np.testing.assert_array_equal(got.val, want.val)


def test_a_directory_without_parquet_reads_its_json_lines(tmp_path):
    write_records(tmp_path / "b.json", [{"prompt": "b", "completion": "2"}])
    write_records(tmp_path / "a.jsonl", [{"prompt": "a", "completion": "1"}])
    (tmp_path / "notes.txt").write_text("not data")
    assert read_examples(tmp_path) == [[("a", False), ("1", True)], [("b", False), ("2", True)]]


BAD_SOURCES = [  # (what to write under tmp_path, the source, the error's pattern)
    ({}, "data/train-*.parquet", r"glob '.*data/train-\*\.parquet' matches no files; check the pattern$"),
    ({"d/x.txt": "x"}, "d", r"d holds no \.parquet, \.jsonl or \.json files; fix --config.data.source$"),
    ({"b.parquet": "not parquet"}, "b.parquet", r"b\.parquet is not a Parquet file \(.*\); give \.parquet"),
    (
        {"c.parquet": [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}]},
        "c.parquet",
        r'c\.parquet:row 2: "completion" is NoneType, not a string; every line needs',
    ),
    (
        {"m.parquet": [{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}]},
        "m.parquet",
        r"m\.parquet:row 2: nothing to train on: no assistant message",
    ),
    (  # found when encoding: the row is named there too
        {
            "a.parquet": [{"prompt": "a", "completion": "b"}] * 2,
            "e.parquet": [{"prompt": "a", "completion": ""}],
        },
        "*.parquet",
        r"e\.parquet:row 1: nothing to train on: the completion gives 0 token",
    ),
    (
        {
            "one.parquet": [{"prompt": "a", "completion": "b"}],
            "two.jsonl": [{"prompt": "a", "completion": "b"}],
        },
        "*.*",
        r"one\.parquet \(and 1 more files\) has 2 example\(s\), which leaves 0 for train and 2 for val at "
        r"val_fraction=0\.9",
    ),
]


@pytest.mark.parametrize("files, source, pattern", BAD_SOURCES)
def test_bad_sources_give_one_line_naming_the_file_and_row(tmp_path, tmp_cache, files, source, pattern):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            (write_parquet if name.endswith(".parquet") else write_records)(path, content)
    val_fraction = 0.9 if "one.parquet" in files else 0.5
    with pytest.raises(DataError, match=pattern) as e:
        load_sft_dataset(str(tmp_path / source), block_size=8, val_fraction=val_fraction)
    assert "\n" not in str(e.value)


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    source = write_parquet(tmp_path / "s.parquet", [{"prompt": "a", "completion": "b"}])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"^reading .*s\.parquet needs pyarrow; pip install pyarrow$"):
        read_examples(source)


def test_a_run_checks_a_glob_or_directory_source_before_loading(tmp_path):
    config = sft_config("tiny", str(tmp_path / "data" / "train-*.parquet"))
    with pytest.raises(DataError, match="matches no files"):
        check_format(config.data)
    config.data.source = str(tmp_path)
    with pytest.raises(DataError, match="holds no .parquet, .jsonl or .json files"):
        check_format(config.data)
    write_parquet(tmp_path / "train-00000-of-00001.parquet", [{"prompt": "a", "completion": "b"}])
    assert check_format(config.data) == "prompt_completion"
