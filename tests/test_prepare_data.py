"""Streaming token files: chunked encoding decodes back to the text, splits by bytes, documents end in EOT."""

import numpy as np
import pytest

from gptjax.data import ByteTokenizer, DataError, GPT2Tokenizer, prepare


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_chunks_decode_back_to_the_text(tmp_path, data_dir):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
    files = [write(tmp_path, "a.txt", text), write(tmp_path, "b.txt", "naïve café 😀\nlast line, no end")]
    tok = GPT2Tokenizer()
    meta = prepare.prepare_files(files, tmp_path / "out", tok, val_fraction=0.2, chunk_chars=100)
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
    for chunk_chars in (16, prepare.CHUNK_CHARS):  # many chunks; one chunk per file
        prepare.prepare_files(files, tmp_path / "b", ByteTokenizer(), chunk_chars=chunk_chars)
        train, val, _ = prepare.open_prepared(tmp_path / "b")
        assert bytes(np.concatenate([train, val]).astype(np.uint8)) == want
        assert len(val) == len(want) - -(-int(len(want) * 0.9) // 6) * 6  # from the first line start on


def test_gpt2_eot_and_char_vocab(tmp_path, data_dir):
    files = [write(tmp_path, f"{i}.txt", f"doc {i}\n" * 30) for i in range(3)]
    prepare.prepare_files(files, tmp_path / "g", GPT2Tokenizer(), eot=True, val_fraction=0.4)
    train, val, _ = prepare.open_prepared(tmp_path / "g")
    ids = np.concatenate([train, val])
    assert (ids == GPT2Tokenizer.eos_id).sum() == 3 and ids[-1] == GPT2Tokenizer.eos_id
    tok = prepare.make_tokenizer("char", files)
    assert tok.chars == "\n 012cdo"
