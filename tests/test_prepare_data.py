"""Streaming token files: chunked encoding decodes back to the text, splits by bytes, documents end in EOT."""

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gptjax.data import ByteTokenizer, DataError, GPT2Tokenizer, load_tokenizer, prepare


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_chunks_decode_back_to_the_text(tmp_path, data_dir):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
    files = [write(tmp_path, "a.txt", text), write(tmp_path, "b.txt", "naïve café 😀\nlast line, no end")]
    tok = GPT2Tokenizer()
    meta = prepare.prepare_files(files, tmp_path / "out", tok, val_fraction=0.2, chunk_bytes=100)
    train, val, saved = prepare.open_prepared(tmp_path / "out")
    assert saved == meta and train.dtype == np.uint16 and len(train) == meta["train_tokens"]
    assert tok.decode(np.concatenate([train, val]).tolist()) == text + files[1].read_text()
    # The val split is the end of the text, about 20% of its bytes (cut at a chunk's line end).
    assert text.endswith(tok.decode(val.tolist()).split("naïve")[0])
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3


def test_eot_ends_each_document_and_bytes_are_exact(tmp_path):
    files = [write(tmp_path, f"{i}.txt", f"doc {i}\n" * 30) for i in range(3)]
    with pytest.raises(DataError, match="end-of-text"):
        prepare.prepare_files(files, tmp_path / "x", ByteTokenizer(), eot=True)
    want = b"".join(f.read_bytes() for f in files)
    for chunk_bytes in (16, prepare.CHUNK_BYTES):  # many chunks; one chunk per file
        prepare.prepare_files(files, tmp_path / "b", ByteTokenizer(), chunk_bytes=chunk_bytes)
        train, val, _ = prepare.open_prepared(tmp_path / "b")
        assert bytes(np.concatenate([train, val]).astype(np.uint8)) == want
        assert len(val) == len(want) - -(-int(len(want) * 0.9) // 6) * 6  # from the first line start on


def test_eot_of_the_last_train_document_stays_in_train(tmp_path, data_dir):
    """Val starting exactly at a file's start: the EOT ending the file before it is train's."""
    files = [write(tmp_path, f"{i}.txt", f"doc {i}\n" * 10) for i in range(2)]  # 60 bytes each
    tok = GPT2Tokenizer()
    prepare.prepare_files(files, tmp_path / "g", tok, eot=True, val_fraction=0.5)
    train, val, _ = prepare.open_prepared(tmp_path / "g")
    assert train[-1] == val[-1] == tok.eos_id and (train == tok.eos_id).sum() == 1
    assert tok.decode(val[:-1].tolist()) == files[1].read_text()


def test_gpt2_eot_and_char_vocab(tmp_path, data_dir):
    files = [write(tmp_path, f"{i}.txt", f"doc {i}\n" * 30) for i in range(3)]
    prepare.prepare_files(files, tmp_path / "g", GPT2Tokenizer(), eot=True, val_fraction=0.4)
    train, val, _ = prepare.open_prepared(tmp_path / "g")
    ids = np.concatenate([train, val])
    assert (ids == GPT2Tokenizer.eos_id).sum() == 3 and ids[-1] == GPT2Tokenizer.eos_id
    tok = prepare.make_tokenizer("char", files)
    assert tok.chars == "\n 012cdo"


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(4, 40))
def test_chunks_stay_under_the_limit_and_join_to_the_text(text, chunk_bytes):
    long_line = "x" * 30 + "é日🎉" * 7 + " word" * 9  # longer than a chunk: cut at a space, else a character
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp, "t.txt")
        path.write_bytes((text + long_line + text).encode("utf-8"))
        chunks = list(prepare._chunks(path, chunk_bytes))
    assert "".join(chunks) == text + long_line + text
    assert all(0 < len(c.encode("utf-8")) <= chunk_bytes for c in chunks)


def expected_val_start(parts: list[bytes], val_fraction: float) -> int:
    """The first line start (a file's start, or after a line end) at or after val_from that leaves val some
    text; else the first whitespace, else the first character start, at or after val_from."""
    data = b"".join(parts)
    val_from = int(len(data) * (1 - val_fraction))
    file_starts = {sum(map(len, parts[:i])) for i, p in enumerate(parts) if p}
    tests = [
        lambda i: i in file_starts or data[i - 1 : i] == b"\n",
        lambda i: data[i : i + 1].isspace(),
        lambda i: data[i] & 0xC0 != 0x80,
    ]
    for test in tests:
        at = next((i for i in range(val_from, len(data)) if test(i)), None)
        if at is not None:
            return at
    return len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(st.sampled_from("ab \n\ré日🎉") | st.characters(codec="utf-8"), max_size=40), max_size=3
    ),
    st.sampled_from([0.1, 0.3, 0.5]),
    st.integers(4, 12),
)
@example(texts=[" ", "\n\n日b\n"], val_fraction=0.5, chunk_bytes=11)  # val_from inside 日: not its line
def test_val_starts_at_the_first_line_start_after_val_from(texts, val_fraction, chunk_bytes):
    parts = [t.encode("utf-8") for t in texts]
    want = expected_val_start(parts, val_fraction)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, part in enumerate(parts):
            files.append(pathlib.Path(tmp, f"{i}.txt"))
            files[-1].write_bytes(part)
        out = pathlib.Path(tmp, "out")
        if not 0 < want < len(b"".join(parts)):
            with pytest.raises(DataError, match="are empty|without text"):
                prepare.prepare_files(
                    files, out, ByteTokenizer(), val_fraction=val_fraction, chunk_bytes=chunk_bytes
                )
            return
        prepare.prepare_files(files, out, ByteTokenizer(), val_fraction=val_fraction, chunk_bytes=chunk_bytes)
        train, val, _ = prepare.open_prepared(out)
        assert bytes(train.tolist()) + bytes(val.tolist()) == b"".join(parts)
        assert len(train) == want


def test_val_without_a_line_start_cuts_at_a_space_or_a_character(tmp_path, data_dir):
    tok = GPT2Tokenizer()
    path = write(tmp_path, "a.txt", "line one\n" + "word " * 30)  # the last 10% has no line end
    meta = prepare.prepare_files([path], tmp_path / "g", tok, eot=True)
    train, val, _ = prepare.open_prepared(tmp_path / "g")
    assert meta["val_tokens"] > 1 and val[-1] == tok.eos_id  # text, then the document's end
    assert tok.decode(val[:-1].tolist()) == " word" * 3 + " "
    assert tok.decode(train.tolist()) + tok.decode(val[:-1].tolist()) == path.read_text()

    path = write(tmp_path, "b.txt", "x\n" + "é" * 50)  # no whitespace either: from a character start
    prepare.prepare_files([path], tmp_path / "b", ByteTokenizer())
    train, val, _ = prepare.open_prepared(tmp_path / "b")
    assert (len(train), len(val)) == (92, 10) and bytes(val.tolist()).decode() == "é" * 5

    with pytest.raises(DataError, match=r"leaves the val split without text \(val would start at byte 2\)"):
        prepare.prepare_files([write(tmp_path, "c.txt", "é")], tmp_path / "c", ByteTokenizer())


class FailsOnBoom(ByteTokenizer):
    def encode(self, text):
        if "boom" in text:
            raise RuntimeError("killed while encoding")
        return super().encode(text)


def test_failed_rerun_leaves_the_old_data(tmp_path):
    out = tmp_path / "out"
    first = prepare.prepare_files([write(tmp_path, "a.txt", "first run\n" * 20)], out, ByteTokenizer())
    train, val, _ = prepare.open_prepared(out)
    before = (train.tolist(), val.tolist())
    second = [write(tmp_path, "b.txt", "second\n" * 100), write(tmp_path, "c.txt", "boom\n")]
    with pytest.raises(RuntimeError, match="killed"):
        prepare.prepare_files(second, out, FailsOnBoom())
    train, val, meta = prepare.open_prepared(out)
    assert meta == first and (train.tolist(), val.tolist()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt", "out"]  # no temp dirs
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    with pytest.raises(DataError, match="holds files other than token files"):  # never replaces your files
        prepare.prepare_files(second[:1], tmp_path, ByteTokenizer())
    with pytest.raises(DataError, match="b.txt is a file, not a directory"):  # nor a file
        prepare.prepare_files(second[:1], second[0], ByteTokenizer())
    assert second[0].read_text() == "second\n" * 100
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it (mkdtemp's is 0o700)


def test_bad_utf8_names_the_file_and_byte(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ab\n" * 10 + "café\n".encode("latin-1"))
    for run in (
        lambda: prepare.prepare_files([bad], tmp_path / "out", ByteTokenizer(), chunk_bytes=8),
        lambda: prepare.make_tokenizer("char", [bad]),
    ):
        with pytest.raises(
            DataError, match=r"latin1.txt is not valid UTF-8 \(invalid continuation byte at byte 33\)"
        ):
            run()


def test_tokenizer_files(tmp_path, data_dir):
    ranks = tmp_path / "r50k.tiktoken"  # a GPT-2 ranks file anywhere, by its path
    shutil.copy(data_dir / "gpt2" / "gpt2.tiktoken", ranks)
    tok = prepare.make_tokenizer(str(ranks), [])
    assert tok.kind == "gpt2" and tok.ranks == str(ranks) and tok.encode("Hello world") == [15496, 995]
    broken = write(tmp_path, "tok.json", '{"kind": "char", "chars": "ab')
    for run in (lambda: prepare.make_tokenizer(str(broken), []), lambda: load_tokenizer(broken)):
        with pytest.raises(DataError, match=r"tok.json is not a tokenizer JSON file \(Unterminated string"):
            run()


def test_settings_that_cannot_split_or_chunk_are_refused(tmp_path):
    files = [write(tmp_path, "a.txt", "some text\n" * 20)]
    for val_fraction in (0.0, 1.0, -0.5):
        with pytest.raises(DataError, match=rf"val_fraction={val_fraction} must be in \(0, 1\)"):
            prepare.prepare_files(files, tmp_path / "out", ByteTokenizer(), val_fraction=val_fraction)
    with pytest.raises(DataError, match="chunk_bytes=3 cannot hold a 4-byte UTF-8 character"):
        prepare.prepare_files(files, tmp_path / "out", ByteTokenizer(), chunk_bytes=3)
    assert not (tmp_path / "out").exists()
    meta = prepare.prepare_files(files, tmp_path / "out", ByteTokenizer(), val_fraction=0.2)
    assert meta["val_fraction"] == prepare.open_prepared(tmp_path / "out")[2]["val_fraction"] == 0.2
    assert (meta["train_tokens"], meta["val_tokens"]) == (160, 40)
