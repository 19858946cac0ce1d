"""A model's loss on a text: nats per token, perplexity, bits per byte and per character (and on
images: nats and bits per pixel).

The text's tokens are cut into consecutive windows of block_size; each token is predicted from the
earlier tokens of its window (no overlap, so a window's first tokens see little context; nanoGPT's
estimate_loss does the same on random windows). A tokenizer with a BOS token (GPT-2's <|endoftext|>)
predicts the first token from it; otherwise the first token is context only and is not counted.
Bits per byte and per character divide the same total by the UTF-8 bytes and the characters of the
predicted text, so they compare models with different tokenizers.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax.data import get_batch
from gptjax.model import GPT, GPTConfig


@functools.partial(jax.jit, static_argnames="cfg")
def _token_nats(params: Any, cfg: GPTConfig, x_BT: jax.Array, y_BT: jax.Array) -> jax.Array:
    logits_BTV, _ = GPT(cfg).apply({"params": params}, x_BT)
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
        x_BT, y_BT = get_batch(
            tokens, batch_size=batch_size, block_size=cfg.block_size, seed=seed, step=step, split=split
        )
        losses.append(float(jnp.mean(_token_nats(params, cfg, x_BT, y_BT))))
    means = np.asarray(losses).reshape(-1, group).mean(axis=1)
    return {
        "batches": batches,
        "loss": float(np.mean(losses)),
        "group": group,
        "group_sd": float(np.std(means)),
        "group_min": float(np.min(means)),
        "group_max": float(np.max(means)),
    }
