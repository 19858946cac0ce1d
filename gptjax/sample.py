"""Sampling from a trained GPT: a jitted prefill + KV-cache decode loop, and `generate` on text.

Each segment prefills its context in one pass, then decodes one token per `lax.fori_loop` iteration
against the cache. When prompt + new tokens exceed the context (block_size), generation slides the
window: it keeps the last block_size // 2 tokens, recomputes their cache and goes on, so every token
sees between block_size // 2 and block_size - 1 tokens of context.
"""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, GPTConfig, init_cache


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 means greedy (argmax)
    top_k: int | None = 200  # keep the k most likely tokens; None or 0 keeps all

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be > 0")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 or None keeps all tokens)")


def next_token(logits_BV: jax.Array, rng: jax.Array, options: SampleOptions) -> jax.Array:
    """Draws one token per row from float32 logits: temperature, then top-k, then a categorical."""
    if options.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / options.temperature
    if options.top_k and options.top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, options.top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "n_new", "options"))
def _segment(params, config: GPTConfig, context_BT, rng, n_new: int, options: SampleOptions):
    """Prefills `context_BT`, then decodes `n_new` tokens (context + n_new <= block_size)."""
    model = GPT(config)
    B, T = context_BT.shape
    cache = init_cache(config, B, T + n_new)
    logits_BTV, cache = model.apply({"params": params}, context_BT, cache=cache)
    first_B = next_token(logits_BTV[:, -1], jax.random.fold_in(rng, 0), options)
    out_BN = jnp.zeros((B, n_new), jnp.int32).at[:, 0].set(first_B)

    def body(i, carry):
        cache, out_BN = carry
        prev_B1 = jax.lax.dynamic_slice_in_dim(out_BN, i - 1, 1, axis=1)
        logits_B1V, cache = model.apply({"params": params}, prev_B1, cache=cache)
        token_B = next_token(logits_B1V[:, 0], jax.random.fold_in(rng, i), options)
        return cache, out_BN.at[:, i].set(token_B)

    _, out_BN = jax.lax.fori_loop(1, n_new, body, (cache, out_BN))
    return out_BN


def generate_tokens(
    params,
    config: GPTConfig,
    prompt: list[int],
    options: SampleOptions,
    *,
    num_samples: int,
    seed: int,
) -> np.ndarray:
    """`num_samples` continuations of one prompt, as token ids [num_samples, max_new_tokens]."""
    if not prompt:
        raise ValueError("the prompt is empty and this tokenizer has no BOS token; pass some text")
    limit = config.block_size - 1  # leave room for at least one new token
    if len(prompt) > limit:
        warnings.warn(
            f"prompt of {len(prompt)} tokens cropped to its last {limit} (block_size)", stacklevel=2
        )
        prompt = prompt[-limit:]
    tokens_BT = np.tile(np.asarray(prompt, np.int32), (num_samples, 1))
    context_BT = tokens_BT
    rng = jax.random.PRNGKey(seed)
    new = []
    remaining = options.max_new_tokens
    while remaining:
        n_new = min(remaining, config.block_size - context_BT.shape[1])
        rng, seg_rng = jax.random.split(rng)
        out_BN = np.asarray(_segment(params, config, jnp.asarray(context_BT), seg_rng, n_new, options))
        new.append(out_BN)
        remaining -= n_new
        tokens_BT = np.concatenate([tokens_BT, out_BN], axis=1)
        context_BT = tokens_BT[:, -(config.block_size // 2) :]  # slide the window
    return np.concatenate(new, axis=1)


def generate(
    workdir: str,
    prompt: str,
    *,
    num_samples: int = 1,
    seed: int = 0,
    **options,
) -> list[str]:
    """Continuations of `prompt` from the latest checkpoint in `workdir`, as text."""
    from gptjax.train import load_params  # sampling needs the checkpoint, training never needs this

    params, config, tokenizer, _ = load_params(workdir)
    ids = generate_tokens(
        params,
        config,
        tokenizer.encode(prompt),
        SampleOptions(**options),
        num_samples=num_samples,
        seed=seed,
    )
    return [prompt + tokenizer.decode(row) for row in ids]
