"""A model's loss on a text: nats per token, perplexity, bits per byte and per character (and on
images: nats and bits per pixel).

The text's tokens are cut into consecutive windows of block_size; each token is predicted from the
earlier tokens of its window (no overlap, so a window's first tokens see little context; nanoGPT's
estimate_loss does the same on random windows). A tokenizer with a BOS token (GPT-2's <|endoftext|>)
predicts the first token from it; otherwise the first token is context only and is not counted.
Bits per byte and per character divide the same total by the UTF-8 bytes and the characters of the
predicted text, so they compare models with different tokenizers.

Multiple choice (HellaSwag and the like, as lm-eval and llm.c score them): each choice's log-likelihood
as a continuation of the context; accuracy picks the likeliest choice by its total (`acc`) and by its
total per character of the choice (`acc_norm`, lm-eval's length normalisation). Tokenization and
HellaSwag's rendering are lm-eval's.
"""

import functools
import json
import math
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax.data import get_batch
from gptjax.model import GPT, GPTConfig


@functools.partial(jax.jit, static_argnames="cfg")
def _token_nats(params: Any, cfg: GPTConfig, x_BT: jax.Array, y_BT: jax.Array, segments_BT=None) -> jax.Array:
    logits_BTV, _ = GPT(cfg).apply({"params": params}, x_BT, segments_BT=segments_BT)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), y_BT)


def text_loss(params: Any, cfg: GPTConfig, tokenizer: Any, text: str, batch_size: int = 8) -> dict:
    """{tokens, loss (nats/token), perplexity, bits_per_byte, bits_per_char} of `text`."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1; pass a positive batch size")
    ids = tokenizer.encode(text)
    n_bytes, n_chars = len(text.encode("utf-8")), len(text)  # what the predicted tokens cover
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    elif ids:  # the first token is context only
        context = tokenizer.decode(ids[:1])
        if text.startswith(context):
            n_bytes, n_chars = n_bytes - len(context.encode("utf-8")), n_chars - len(context)
        else:  # a byte cut from a multi-byte character: that character stays partly predicted
            n_bytes -= 1
    if len(ids) < 2:
        raise ValueError(f"the text has {len(ids)} token(s); it needs at least 2 to predict one")
    T = cfg.block_size
    n = len(ids) - 1  # predicted tokens
    W = math.ceil(n / T)
    ids_N = np.zeros(W * T + 1, np.int32)
    ids_N[: len(ids)] = ids
    x_WT = ids_N[:-1].reshape(W, T)
    y_WT = ids_N[1:].reshape(W, T)
    mask_WT = (np.arange(W * T) < n).reshape(W, T)
    pad = -W % batch_size  # whole batches: one compiled shape
    x_WT, y_WT, mask_WT = (np.concatenate([a, np.zeros((pad, T), a.dtype)]) for a in (x_WT, y_WT, mask_WT))
    total = 0.0
    for i in range(0, len(x_WT), batch_size):
        nats_BT = np.asarray(_token_nats(params, cfg, x_WT[i : i + batch_size], y_WT[i : i + batch_size]))
        total += float(np.sum(nats_BT, where=mask_WT[i : i + batch_size], dtype=np.float64))
    bits = total / math.log(2)
    return {
        "tokens": n,
        "loss": total / n,
        "perplexity": math.exp(total / n),
        "bits_per_byte": bits / n_bytes,
        "bits_per_char": bits / n_chars,
    }


def image_loss(params: Any, cfg: GPTConfig, rows_NL: np.ndarray, batch_size: int = 64) -> dict:
    """{images, loss (nats/pixel), bits_per_dim} of every image row (gptjax.data.load_image_dataset's:
    a start token, then the pixels), each pixel predicted from the start token and the pixels before it.
    Bits per dimension as iGPT reports them: per palette-coded pixel, not per RGB sub-pixel."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1; pass a positive batch size")
    rows_NL = np.asarray(rows_NL, np.int32)
    N = len(rows_NL)
    if N == 0:
        raise ValueError("no images to evaluate")
    pad = -N % batch_size  # whole batches: one compiled shape
    rows_NL = np.concatenate([rows_NL, np.zeros((pad, rows_NL.shape[1]), np.int32)])
    total = 0.0
    for i in range(0, N, batch_size):
        batch = rows_NL[i : i + batch_size]
        nats_BT = np.asarray(_token_nats(params, cfg, batch[:, :-1], batch[:, 1:]))
        total += float(np.sum(nats_BT[: N - i], dtype=np.float64))
    loss = total / (N * (rows_NL.shape[1] - 1))
    return {"images": N, "loss": loss, "bits_per_dim": loss / math.log(2)}


def random_batch_loss(
    params: Any,
    cfg: GPTConfig,
    tokens: np.ndarray,
    *,
    batch_size: int,
    batches: int,
    group: int,
    split: str = "val",
    seed: int = 0,
) -> dict:
    """nanoGPT's estimate_loss, repeated: the mean loss of `batches` random batches of `batch_size`
    windows of `tokens` (gptjax.data.get_batch, stream `split`), and how the mean of `group` of them
    (nanoGPT's eval_iters) scatters around it: {batches, loss, group, group_sd, group_min, group_max}."""
    for name, value in (("batch_size", batch_size), ("group", group)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1; pass a positive {name}")
    if batches < group or batches % group:
        raise ValueError(f"batches={batches} must be a positive multiple of group={group}")
    losses = []
    for step in range(batches):
        x_BT, y_BT, *segments_BT = get_batch(
            tokens, batch_size=batch_size, block_size=cfg.block_size, seed=seed, step=step, split=split
        )
        trained_BT = y_BT >= 0  # a fine-tuning prompt's targets are IGNORE: the loss is training's
        nats_BT = _token_nats(params, cfg, x_BT, np.maximum(y_BT, 0), *segments_BT)
        losses.append(float(jnp.sum(jnp.where(trained_BT, nats_BT, 0.0)) / max(trained_BT.sum(), 1)))
    means = np.asarray(losses).reshape(-1, group).mean(axis=1)
    return {
        "batches": batches,
        "loss": float(np.mean(losses)),
        "group": group,
        "group_sd": float(np.std(means)),
        "group_min": float(np.min(means)),
        "group_max": float(np.max(means)),
    }


# ----- Multiple choice ---------------------------------------------------------------------------------


def read_choices(path: str | pathlib.Path) -> list[dict]:
    """Examples {context, choices, label, chars} of a JSON-lines file: HellaSwag's rows as published (each
    ending continues the context after a space; with activity_label, ctx_a and ctx_b rendered as
    lm-eval's hellaswag task does, else its ctx as llm.c does) or rows of context, choices and label (each
    choice continues the context exactly as written: include its leading space). `chars`: each choice's
    length for acc_norm (lm-eval's: the ending's, without the space before it)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a JSON-lines file of examples")
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where} is not JSON ({e}); write one example per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not a JSON object; write {{context, choices, label}} per line")
        if "endings" in row:  # HellaSwag
            context, choices, chars = _hellaswag(row)
        else:
            context, choices = row.get("context"), row.get("choices")
            chars = (
                [len(c) if isinstance(c, str) else 0 for c in choices] if isinstance(choices, list) else []
            )
        label = row.get("label")
        if isinstance(label, str) and label.isdigit():  # some HellaSwag copies write "3"
            label = int(label)
        if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(
                f"{where} needs a text context and 2 or more text choices: {{context, choices, label}} or "
                "HellaSwag's {ctx, endings, label}"
            )
        if not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{where} has an empty or non-text choice; every choice must be text")
        if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices)):
            raise ValueError(
                f"{where} label={label!r} must be the index of the right choice, 0-{len(choices) - 1}"
            )
        examples.append({"context": context, "choices": choices, "label": label, "chars": chars})
    if not examples:
        raise ValueError(f"{path} holds no examples; write one JSON object per line")
    return examples


def _hellaswag(row: dict) -> tuple[Any, Any, list[int]]:
    """(context, choices, their lengths) of a HellaSwag row; None where a field is not text."""
    endings = row["endings"]
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        return None, None, []
    if all(isinstance(row.get(k), str) for k in ("activity_label", "ctx_a", "ctx_b")):  # lm-eval's rendering

        def clean(text: str) -> str:
            text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
            return text.replace("  ", " ")

        context = clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        endings = [clean(e) for e in endings]
    else:  # llm.c's
        context = row.get("ctx")
    return context, [" " + e for e in endings], [len(e) for e in endings]


def choice_logprobs(
    params: Any, cfg: GPTConfig, tokenizer: Any, context: str, choices: list[str], batch_size: int = 8
) -> np.ndarray:
    """The log-likelihood (nats, summed over its tokens) of each choice as the continuation of `context`.
    Tokenized as lm-eval does: spaces ending the context move to the choice, context + choice are encoded
    whole and the choice's tokens are those after the context's own encoding; an empty context starts
    from the tokenizer's BOS (else EOS) token. A row longer than the context window loses its first
    tokens, never the choice's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, choices = context[:-spaces], [context[-spaces:] + c for c in choices]
    ctx = tokenizer.encode(context)
    start = []
    if not ctx:
        first = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if first is None:
            raise ValueError("the context is empty and the tokenizer has no BOS/EOS token to start from")
        start = [first]
    rows, spans = [], []
    for choice in choices:
        cont = tokenizer.encode(context + choice)[len(ctx) :]
        if not cont or len(cont) > cfg.block_size:
            raise ValueError(
                f"choice {choice[:40]!r} has {len(cont)} tokens; a choice needs 1 to block_size="
                f"{cfg.block_size}"
            )
        ids = (start + ctx + cont)[-(cfg.block_size + 1) :]
        rows.append(ids)
        spans.append(len(cont))
    T = min(cfg.block_size, max(16, 1 << (max(map(len, rows)) - 2).bit_length()))  # few compiled shapes
    R = len(rows) + (-len(rows) % batch_size)
    x_RT, y_RT, mask_RT = np.zeros((R, T), np.int32), np.zeros((R, T), np.int32), np.zeros((R, T), bool)
    for r, (ids, k) in enumerate(zip(rows, spans, strict=True)):
        n = len(ids) - 1
        x_RT[r, :n], y_RT[r, :n] = ids[:-1], ids[1:]
        mask_RT[r, n - k : n] = True  # the choice's tokens
    nats_RT = np.concatenate(
        [np.asarray(_token_nats(params, cfg, x_RT[i : i + batch_size], y_RT[i : i + batch_size]))
         for i in range(0, R, batch_size)]
    )  # fmt: skip
    return -np.sum(nats_RT, where=mask_RT, axis=1, dtype=np.float64)[: len(rows)]


def multiple_choice(
    params: Any, cfg: GPTConfig, tokenizer: Any, examples: list[dict], batch_size: int = 8, progress=None
) -> dict:
    """{examples, acc, acc_norm} over `examples` (read_choices'): the fraction whose right choice is the
    likeliest by total log-likelihood, and by log-likelihood per character of the choice."""
    right = right_norm = 0
    for ex in progress(examples) if progress else examples:
        logp_C = choice_logprobs(params, cfg, tokenizer, ex["context"], ex["choices"], batch_size)
        chars_C = np.maximum(np.array(ex["chars"], np.float64), 1)
        right += int(np.argmax(logp_C)) == ex["label"]
        right_norm += int(np.argmax(logp_C / chars_C)) == ex["label"]
    n = len(examples)
    return {"examples": n, "acc": right / n, "acc_norm": right_norm / n}
