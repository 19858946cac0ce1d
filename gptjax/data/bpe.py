"""Byte-level tokenizers: raw UTF-8 bytes (256 ids) and GPT-2's byte-level BPE (50,257 ids, tiktoken).

Both encode any text, so decode(encode(s)) == s for every string. GPT-2's ranks are found like the
data sources: an explicit file, then $GPTJAX_DATA_DIR/gpt2/gpt2.tiktoken, then tiktoken's own download
and cache (`tiktoken.get_encoding("gpt2")`). `hf_vocab_and_merges` rebuilds HF's vocab.json and
merges.txt from the ranks, for exporting to transformers.
"""

import base64
import hashlib
import os
import pathlib

import numpy as np

from gptjax.data.sources import DataError

# GPT-2's pre-tokenizer regex as tiktoken writes it (tiktoken_ext/openai_public.py r50k_pat_str, equivalent to
# the original release's pattern but faster).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256  # the one special token, after the 50,256 merge ranks (HF config bos/eos_token_id)
# sha256 of the ranks file (tiktoken's r50k_base expected_hash; shared/data/README.md).
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_GPT2_RANKS_REL = pathlib.Path("gpt2", "gpt2.tiktoken")
TIKTOKEN_SOURCE = "tiktoken:gpt2"  # `ranks` value meaning: tiktoken.get_encoding("gpt2")


def _check_ids(ids, vocab_size: int) -> list[int]:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DataError(f"decode takes a 1-D sequence of ids, got shape {ids.shape}")
    ids = ids.tolist()
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise DataError(f"ids {bad[:10]} are outside the vocab [0, {vocab_size})")
    return ids


class ByteTokenizer:
    """One token per UTF-8 byte: any text, 256 ids, no special tokens."""

    kind = "byte"
    vocab_size = 256
    bos_id = None
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Text of `ids`; a cut-off multi-byte character becomes U+FFFD."""
        return bytes(_check_ids(ids, self.vocab_size)).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"kind": self.kind}


def read_ranks(path: str | pathlib.Path) -> dict[bytes, int]:
    """A tiktoken ranks file: one `base64(token) rank` per line; checked against GPT-2's sha256."""
    data = pathlib.Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise DataError(
            f"{path} is not GPT-2's BPE ranks file (sha256 differs from {GPT2_RANKS_SHA256[:12]}...)"
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def resolve_gpt2_ranks(path: str | None = None) -> str:
    """Where GPT-2's ranks come from: `path`, then $GPTJAX_DATA_DIR/gpt2/gpt2.tiktoken, else tiktoken."""
    if path is not None and path != TIKTOKEN_SOURCE:
        explicit = pathlib.Path(path).expanduser()
        if not explicit.is_file():
            raise DataError(f"GPT-2 ranks file {explicit} does not exist; fix the path")
        return str(explicit)
    data_dir = os.environ.get("GPTJAX_DATA_DIR")
    if data_dir and (pathlib.Path(data_dir) / _GPT2_RANKS_REL).is_file():
        return str(pathlib.Path(data_dir) / _GPT2_RANKS_REL)
    return TIKTOKEN_SOURCE


class GPT2Tokenizer:
    """GPT-2's byte-level BPE via tiktoken; ids equal OpenAI's and HF's ("Hello world" -> [15496, 995])."""

    kind = "gpt2"
    vocab_size = GPT2_EOT_ID + 1
    bos_id = GPT2_EOT_ID  # GPT-2 uses <|endoftext|> for both (HF config.json)
    eos_id = GPT2_EOT_ID

    def __init__(self, ranks: str | None = None):
        """`ranks`: a .tiktoken file, or None to search (see `resolve_gpt2_ranks`)."""
        import tiktoken  # here: only BPE users pay for the import

        self.ranks = resolve_gpt2_ranks(ranks)
        if self.ranks == TIKTOKEN_SOURCE:
            try:
                self._enc = tiktoken.get_encoding("gpt2")
            except Exception as e:  # offline: requests' errors, or tiktoken's own
                reason = " ".join(str(e).split())[:200]
                raise DataError(
                    f"GPT-2's BPE ranks not found ({type(e).__name__}: {reason}); put r50k_base.tiktoken at "
                    f"$GPTJAX_DATA_DIR/{_GPT2_RANKS_REL} or pass its path"
                ) from e
        else:
            self._enc = tiktoken.Encoding(
                name="gpt2",
                pat_str=GPT2_PATTERN,
                mergeable_ranks=read_ranks(self.ranks),
                special_tokens={GPT2_EOT: GPT2_EOT_ID},
            )

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; "<|endoftext|>" in the text is ordinary text (append eos_id yourself)."""
        return self._enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        """Text of `ids`; a cut-off multi-byte character becomes U+FFFD."""
        return self._enc.decode(_check_ids(ids, self.vocab_size), errors="replace")

    def token_bytes(self) -> list[bytes]:
        """The bytes of every BPE token in rank order (id = rank), without <|endoftext|>."""
        return [self._enc.decode_single_token_bytes(i) for i in range(GPT2_EOT_ID)]

    def to_json(self) -> dict:
        """Where the ranks came from; a checkpoint moved elsewhere searches again (`resolve_gpt2_ranks`)."""
        return {"kind": self.kind, "ranks": self.ranks}

    @classmethod
    def from_json(cls, d: dict) -> "GPT2Tokenizer":
        saved = d.get("ranks")
        if saved and saved != TIKTOKEN_SOURCE and pathlib.Path(saved).is_file():
            return cls(saved)
        return cls()


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character map, in which HF's vocab.json and merges.txt spell tokens: the
    188 printable Latin-1 bytes stand for themselves, the other 68 become U+0100 onwards in byte order."""
    spans = [("!", "~"), ("¡", "¬"), ("®", "ÿ")]
    printable = [b for first, last in spans for b in range(ord(first), ord(last) + 1)]
    moved = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def hf_vocab_and_merges(tokens: list[bytes]) -> tuple[dict[str, int], list[str]]:
    """HF's vocab.json (token -> id) and merges.txt lines of a byte-level BPE given as tiktoken ranks.

    `tokens[r]` is the token of rank r. tiktoken keeps no merges: the one that made token r is the last
    step of byte-pair encoding its bytes with the tokens ranked below r (lowest rank first, as tiktoken
    encodes), which leaves exactly two tokens. Merges are listed in the rank order of what they make.
    """
    chars = byte_to_unicode()
    spell = lambda token: "".join(chars[b] for b in token)  # noqa: E731
    ranks = {token: rank for rank, token in enumerate(tokens)}
    merges = []
    for rank, token in enumerate(tokens):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:], strict=False)]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[i] >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2 or max(ranks.get(p, rank) for p in parts) >= rank:
            raise DataError(f"token {rank} ({token!r}) is not a merge of two lower-ranked tokens; not a BPE")
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    return {spell(token): rank for rank, token in enumerate(tokens)}, merges


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (e.g. a byte-level BPE from scripts/train_tokenizer.py, or a
    Llama's tokenizer.json), stored whole in its JSON so a checkpoint needs no other file. Special tokens
    written in the text (e.g. "<|endoftext|>") become their ids, and decode to their text.

    `eos` and `bos` name the model's end and start tokens (GPT-2's <|endoftext|> for both unless told;
    gptjax.hf_tokenizer reads a model directory's), `end_tokens` every token that ends a reply (HF's
    eos_token_id list, e.g. Llama 3 Instruct's <|eot_id|> beside <|end_of_text|>), and `chat_template`
    the model's Jinja chat template (HF's tokenizer_config.json), which gptjax.data.chat then writes
    conversations with instead of ChatML. `adds_bos`: the tokenizer's own post-processor starts a text
    with BOS (a Llama's), as HF's tokenizer(text) does: `with_bos` does the same for prompts and
    fine-tuning examples, while `encode` gives the text's tokens alone."""

    kind = "hf"

    def __init__(
        self,
        tokenizer_json: str,
        eos: str | None = GPT2_EOT,
        bos: str | None = None,
        chat_template: str | None = None,
        end_tokens: tuple[str, ...] = (),
    ):
        from tokenizers import Tokenizer  # here: only users of trained tokenizers need the package

        self._json = tokenizer_json
        self._tok = Tokenizer.from_str(tokenizer_json)
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_id = self._tok.token_to_id(eos) if eos else None
        self.eos_token = eos if self.eos_id is not None else None  # its text, for HF's special tokens
        bos_id = self._tok.token_to_id(bos) if bos else None
        self.bos_id = bos_id if bos_id is not None else self.eos_id
        self.bos_token = bos if bos_id is not None else self.eos_token
        self.adds_bos = bos_id is not None and self._tok.encode("a").ids[:1] == [bos_id]
        known = [t for t in end_tokens if self._tok.token_to_id(t) is not None]
        self.end_tokens = tuple(dict.fromkeys([*([self.eos_token] if self.eos_token else []), *known]))
        self.chat_template = chat_template

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=False)

    def with_bos(self, ids: list[int]) -> list[int]:
        """`ids` of a text's start, with BOS before them when the tokenizer adds one (`adds_bos`) and they
        do not start with it already (a chat template writes its own)."""
        return [self.bos_id, *ids] if self.adds_bos and ids[:1] != [self.bos_id] else list(ids)

    def to_json(self) -> dict:
        out = {"kind": self.kind, "tokenizer": self._json, "eos": self.eos_token, "bos": self.bos_token}
        return {**out, "end_tokens": list(self.end_tokens), "chat_template": self.chat_template}

    @classmethod
    def from_json(cls, d: dict) -> "HFTokenizer":
        if "eos" not in d:  # saved before the special tokens were: GPT-2's end token, as then
            return cls(d["tokenizer"])
        return cls(d["tokenizer"], d["eos"], d["bos"], d.get("chat_template"), tuple(d.get("end_tokens", ())))


def train_bpe(files: list[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """A byte-level BPE (GPT-2's scheme: 256 byte symbols, GPT-2's pre-tokenizer regex, one special
    token <|endoftext|> = id 0) trained on `files` with HF `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from gptjax.data.prepare import _chunks  # prepare imports this module

    if vocab_size < 257:
        raise DataError(f"vocab_size={vocab_size} is too small: the 256 bytes and <|endoftext|> need 257")
    chars = 0
    for file in files:  # HF's trainer fails on bad UTF-8 without naming the file; _chunks names it
        chars += sum(len(chunk) for chunk in _chunks(pathlib.Path(file)))
    if not chars:
        names = ", ".join(map(str, files[:3])) + (", ..." if len(files) > 3 else "")
        raise DataError(f"the corpus ({names}) is empty; give files that hold text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[GPT2_EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    return HFTokenizer(tok.to_str())
