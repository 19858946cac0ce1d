"""Streaming token files: chunked encoding decodes back to the text, splits by bytes, documents end in EOT;
JSON-lines and Parquet documents, split by documents, encoded alike by any number of processes."""

import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
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


# ------------------------------------------------------------------------ JSON lines and Parquet documents

DOCS = ["Hello world", "naïve café 😀\nsecond line", "", "ends in a newline\n", "<|endoftext|> is text here"]
DOCS += [f"document {i}: " + "word " * i for i in range(7)]  # 12 documents in all


def write_jsonl(path, docs, field="text"):
    lines = [json.dumps({"id": i, field: doc}) + "\n" for i, doc in enumerate(docs)]
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(lines[:1] + ["\n"] + lines[1:]))  # a blank line is no document
    return path


def write_parquet(path, columns, **kwargs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def pa_strings(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


def test_jsonl_and_parquet_documents_each_end_in_eot_and_split_between_documents(tmp_path, data_dir):
    files = [
        write_jsonl(tmp_path / "a.jsonl", DOCS[:4]),
        write_jsonl(tmp_path / "b.json.gz", DOCS[4:7]),
        write_parquet(tmp_path / "c.parquet", {"text": DOCS[7:], "n": list(range(5))}),
    ]
    tok = GPT2Tokenizer()
    meta = prepare.prepare_files(files, tmp_path / "out", tok, val_fraction=0.25)  # eot by default
    train, val, saved = prepare.open_prepared(tmp_path / "out")
    encoded = [tok.encode(doc) + [tok.eos_id] for doc in DOCS]
    assert train.tolist() == sum(encoded[:9], []) and val.tolist() == sum(encoded[9:], [])  # 12 * 0.75 = 9
    assert saved == meta and meta["inputs"] == "jsonl+parquet" and meta["eot"] is True
    assert (meta["train_documents"], meta["val_documents"]) == (9, 3)
    assert tok.encode(DOCS[4])[:3] == [27, 91, 437]  # "<|endoftext|>" written in a document is not EOT

    meta = prepare.prepare_files(files, tmp_path / "noeot", ByteTokenizer(), eot=False, val_fraction=0.25)
    train, val, _ = prepare.open_prepared(tmp_path / "noeot")
    assert (
        bytes(train.tolist()) == "".join(DOCS[:9]).encode()
        and bytes(val.tolist()) == "".join(DOCS[9:]).encode()
    )
    assert meta["eot"] is False and (meta["train_documents"], meta["val_documents"]) == (9, 3)
    # The char vocab is the documents' characters, not the JSON around them.
    assert prepare.make_tokenizer("char", files).chars == "".join(sorted(set("".join(DOCS))))


def test_parquet_read_in_many_record_batches_gives_the_same_files(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": DOCS * 3}, row_group_size=5)  # 36 rows, 8 groups
    assert [len(docs) for docs in prepare._documents(path, "text", read_rows=2)] == [2] * 18  # across groups
    outs = []
    for read_rows, chunk_bytes in ((2, 8), (prepare.READ_ROWS, prepare.CHUNK_BYTES)):
        out = tmp_path / f"rows{read_rows}"
        prepare.prepare_files(
            [path], out, ByteTokenizer(), eot=False, read_rows=read_rows, chunk_bytes=chunk_bytes
        )
        outs.append([(out / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")])
    assert outs[0] == outs[1]
    val = np.frombuffer(outs[0][1], np.uint16)
    assert bytes(val.tolist()) == "".join(DOCS[-4:]).encode()  # int(36 * 0.9) = 32 train documents


def test_two_processes_write_the_same_files_as_one(tmp_path, data_dir):
    rng = np.random.default_rng(0)
    docs = [
        " ".join(rng.choice(["the", "cat", "é", "😀", "\n", "sat"], rng.integers(0, 40))) for _ in range(300)
    ]
    inputs = {
        "documents": [  # JSON lines are parsed in the workers
            write_jsonl(tmp_path / "a.jsonl", docs[:200]),
            write_jsonl(tmp_path / "b.jsonl.gz", docs[200:]),
        ],
        "text": [write(tmp_path, "t.txt", "\n".join(docs))],
    }
    for kind, files in inputs.items():
        outs = []
        for num_proc in (1, 2):
            out = tmp_path / f"{kind}{num_proc}"
            # chunk_bytes=256: ~40 batches, many more than the 4 in flight at once
            prepare.prepare_files(files, out, GPT2Tokenizer(), num_proc=num_proc, chunk_bytes=256)
            outs.append([(out / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")])
        assert outs[0] == outs[1] and len(outs[0][0]) > 1000, kind
    train, val, meta = prepare.open_prepared(tmp_path / "documents2")
    assert (meta["train_documents"], meta["val_documents"]) == (270, 30)
    assert val.tolist() == sum((GPT2Tokenizer().encode(d) + [GPT2Tokenizer.eos_id] for d in docs[270:]), [])


def test_the_script_encodes_documents_with_two_processes(tmp_path, data_dir):
    """A spawned worker imports the script again (as __mp_main__): it must not run it, nor need JAX."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    done = subprocess.run(
        [
            sys.executable,
            "scripts/prepare_data.py",
            f"--input={tmp_path}/*.jsonl",
            f"--out_dir={tmp_path}/out",
        ]
        + ["--num_proc=2", "--val_fraction=0.25"],
        cwd=pathlib.Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "prepare: 100%" in done.stderr  # a progress bar by default
    train, val, _ = prepare.open_prepared(tmp_path / "out")
    tok = GPT2Tokenizer()
    assert tok.decode(val.tolist()) == "<|endoftext|>".join(DOCS[9:]) + "<|endoftext|>"
    assert (
        done.stdout
        == f"{tmp_path}/out: {len(train)} train and {len(val)} val tokens from 9 and 3 documents (uint16)\n"
    )


def one_line_error(run) -> str:
    with pytest.raises(DataError) as e:
        run()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_document_errors_name_the_file_and_record(tmp_path, monkeypatch):
    def prepare_one(name, content=None, **kwargs):
        path = tmp_path / name
        if isinstance(content, dict):
            write_parquet(path, content)
        elif content is not None:
            path.write_text(content)
        return one_line_error(
            lambda: prepare.prepare_files([path], tmp_path / "out", GPT2Tokenizer(), **kwargs)
        )

    good = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(20))
    text_field = "pass --text_field=NAME"
    assert prepare_one("a.jsonl", good + '{"body": "x", "id": 3}\n').endswith(
        f"a.jsonl line 21 has no field 'text' (its fields: body, id); {text_field}"
    )
    assert prepare_one("a.jsonl", good, text_field="body").endswith(  # found by the count, before encoding
        f"a.jsonl line 1 has no field 'body' (its fields: text); {text_field}"
    )
    assert prepare_one("b.parquet", {"body": ["x"], "id": [1]}).endswith(
        f"b.parquet has no column 'text' (its columns: body, id); {text_field}"
    )
    assert "a.jsonl line 22: 'text' is a JSON number, not a string" in prepare_one(
        "a.jsonl", good + '\n{"text": 5}'
    )
    assert "a.jsonl line 21: 'text' is a JSON null, not a string" in prepare_one(
        "a.jsonl", good + '{"text": null}'
    )
    assert "a.jsonl line 21 is a JSON array, not an object" in prepare_one("a.jsonl", good + '["x"]')
    assert "a.jsonl line 21 is not JSON (Expecting property name" in prepare_one(
        "a.jsonl", good + "{text: 1}"
    )
    assert "c.parquet row 2 (from 0): 'text' is null" in prepare_one(
        "c.parquet", {"text": ["a", "b", None] * 9}
    )
    assert "d.parquet column 'text' holds int64, not strings" in prepare_one("d.parquet", {"text": [1, 2]})
    assert "e.parquet is not a Parquet file (" in prepare_one("e.parquet", "not parquet")
    assert "f.jsonl.gz is not a whole gzip file (" in prepare_one("f.jsonl.gz", good)
    assert "g.jsonl.zst is zstd-compressed" in prepare_one("g.jsonl.zst", good)
    assert prepare_one("h.jsonl", "\n \n").startswith("the input files hold no documents")
    assert prepare_one("h.parquet", {"text": pa_strings([])}).startswith("the input files hold no documents")
    assert prepare_one("j.jsonl", '{"text": "x"}\n' * 9 + '{"text": ""}\n', eot=False).startswith(
        "the val split's documents (1) encode to no tokens"
    )
    assert prepare_one("i.jsonl", '{"text": "one"}\n').startswith(
        "val_fraction=0.1 of 1 documents leaves the train split without documents"
    )
    (tmp_path / "t.txt").write_text("text\n")
    assert "mix text files (t.txt) and document files (a.jsonl)" in one_line_error(
        lambda: prepare.prepare_files(
            [tmp_path / "t.txt", tmp_path / "a.jsonl"], tmp_path / "o", ByteTokenizer()
        )
    )
    assert "end-of-text id; byte has none; use another tokenizer, or eot=False (--noeot)" in one_line_error(
        lambda: prepare.prepare_files([tmp_path / "i.jsonl"], tmp_path / "o", ByteTokenizer())
    )
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert prepare_one("b.parquet").endswith("b.parquet needs pyarrow; pip install pyarrow")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_the_progress_bar_counts_input_bytes_and_closes_on_errors(tmp_path, capsys, data_dir):
    from tqdm import tqdm

    files = [
        write_jsonl(tmp_path / "a.jsonl", DOCS[:4]),
        write_jsonl(tmp_path / "b.json.gz", DOCS[4:7]),
        write_parquet(tmp_path / "c.parquet", {"text": DOCS[7:]}),
    ]
    sizes = np.cumsum([f.stat().st_size for f in files])
    # Each document's pieces count the bytes read through it: JSON lines' (gzipped: compressed) up to the
    # line's end, a Parquet file's in proportion to its rows (2 at a time here), up to each file's size.
    dones = [done for *_, done in prepare._document_pieces(files, [4, 3, 5], "text", 9, read_rows=2)]
    assert dones == sorted(dones) and dones[3] == sizes[0] and dones[-1] == sizes[-1]
    assert sizes[0] < dones[4] <= dones[6] <= sizes[1] and dones[7] == dones[8] < sizes[2]
    assert capsys.readouterr().err == ""
    for kind, inputs, tok in (
        ("documents", files, GPT2Tokenizer()),
        ("text", [write(tmp_path, "t.txt", "some text\n" * 200)], ByteTokenizer()),
    ):
        meta = prepare.prepare_files(inputs, tmp_path / kind, tok, chunk_bytes=64, progress=True)
        err = capsys.readouterr().err
        size = tqdm.format_sizeof(sum(f.stat().st_size for f in inputs), divisor=1024)
        assert "prepare: 100%" in err and f"| {size}/{size} [" in err, (kind, err)
        assert ("count: 100%" in err) == (kind == "documents"), err  # the pass that counts documents
        assert f"tokens={meta['train_tokens'] + meta['val_tokens']:,}]" in err and err.endswith("\n"), err
        prepare.prepare_files(inputs, tmp_path / kind, tok, chunk_bytes=64)  # progress=False: no bar
        assert capsys.readouterr().err == ""
    bad = write(tmp_path, "bad.jsonl", '{"text": "x"}\n' * 150 + "{text: 1}\n" + '{"text": "x"}\n' * 150)
    one_line_error(
        lambda: prepare.prepare_files([bad], tmp_path / "bad", GPT2Tokenizer(), chunk_bytes=64, progress=True)
    )
    err = capsys.readouterr().err
    # The bar is closed: the error starts its own line.
    assert "prepare:" in err and "prepare: 100%" not in err and err.endswith("\n"), err


def test_two_processes_raise_the_same_document_errors_as_one(tmp_path):
    """Workers parse the JSON lines: a bad line's DataError names its file and line as the main process's
    does, and it is the first bad line's, though later batches were parsed at the same time."""
    good = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(60))
    lines = good.splitlines(keepends=True)
    files = {  # the first bad line, then another a few batches (of 2 lines) later, parsed while it is
        "a": lines[:30] + ['{"body": "x"}\n'] + lines[30:34] + ["{text: 1}\n"] + lines[34:],
        "b": lines[:40] + ["\n", '{"text": "x",\n'] + lines[40:44] + ['{"body": "x"}\n'] + lines[44:],
    }
    want = {
        "a": "a.jsonl line 31 has no field 'text' (its fields: body); pass --text_field=NAME",
        "b": "b.jsonl line 42 is not JSON (Expecting property name enclosed in double quotes: line 2 column "
        "1 (char 14)); give one JSON object per line",
    }
    for name, content in files.items():
        path = write(tmp_path, f"{name}.jsonl", "".join(content))
        errors = [
            one_line_error(
                lambda n=num_proc: prepare.prepare_files(
                    [path], tmp_path / "out", ByteTokenizer(), eot=False, num_proc=n, chunk_bytes=32
                )
            )
            for num_proc in (1, 2)
        ]
        assert errors == [f"{tmp_path}/{want[name]}"] * 2, errors
    assert not (tmp_path / "out").exists()
