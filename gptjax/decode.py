"""The device side of generation (gptjax.sample is the host side): the params as decoding reads them
(per layer, einsum attention; [out, in] kernels for one row on CPU), the decoding state, the prefill that
fills the KV cache, one model step, the sampling of a token, and the jitted `lax.while_loop` that
decodes until a column is written, every row is finished, or the cache is full.
"""

import dataclasses
import functools
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gptjax import beam as beam_lib
from gptjax.model import GPT, GPTConfig, init_cache, unstack_layers
from gptjax.sampling import BEAM_MODES, History, TopK, apply_rules

# ----- The params as decoding reads them -------------------------------------------------------------------


def for_decoding(params: Any, config: GPTConfig) -> tuple[Any, GPTConfig]:
    """Per-layer params and the einsum attention (the one that reads the cache in place), no remat."""
    if config.scan_layers:
        params = unstack_layers(params)
    return params, dataclasses.replace(
        config, scan_layers=False, remat="none", attention="einsum", dropout=0.0
    )


# Decoding one row on CPU reads every weight once per token; XLA's CPU matrix-vector product streams
# [out, in] kernels ~20% faster than [in, out] ones once they no longer fit the caches (measured: GPT-2
# 124M +7-15% tokens/s; the 0.8M baby GPT slower). Smaller models keep [in, out].
MATVEC_MIN_KERNEL_BYTES = 64 * 2**20
_matvec_cache: dict[str, Any] = {}  # the last params' transposed kernels, dropped with those params


def for_matvec(params: Any, config: GPTConfig) -> tuple[Any, GPTConfig]:
    """Params and config with every Dense kernel transposed to [out, in] (gptjax.layers.Dense), the layout
    in which XLA's CPU decodes one row fastest. The copy is kept while `params` (jax arrays) lives, so that
    repeated generate calls on the same params transpose once."""
    leaves = jax.tree_util.tree_leaves(params)
    hit = _matvec_cache.get("sources")
    if (
        hit is not None
        and len(hit) == len(leaves)
        and all(r() is x for r, x in zip(hit, leaves, strict=True))
    ):
        return _matvec_cache["params"], dataclasses.replace(config, kernel_layout="out_in")
    _matvec_cache.clear()
    flip = lambda path, x: _transpose(x) if path[-1].key == "kernel" else x  # noqa: E731
    flipped = jax.tree_util.tree_map_with_path(flip, params)
    # Only jax arrays are cached: they cannot change, while a numpy array edited in place keeps its id.
    if all(isinstance(x, jax.Array) for x in leaves):
        sources = [weakref.ref(x) for x in leaves]
        weakref.finalize(leaves[0], _drop_matvec_cache, sources)
        _matvec_cache.update(sources=sources, params=flipped)
    return flipped, dataclasses.replace(config, kernel_layout="out_in")


def _drop_matvec_cache(sources: list) -> None:
    if _matvec_cache.get("sources") is sources:
        _matvec_cache.clear()


def use_matvec_layout(params: Any, rows: int) -> bool:
    if rows != 1 or jax.default_backend() != "cpu":
        return False
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "kernel"]
    return sum(x.size * x.dtype.itemsize for x in kernels) >= MATVEC_MIN_KERNEL_BYTES


_transpose = jax.jit(jnp.transpose)


# ----- The decoding loop -----------------------------------------------------------------------------------


@struct.dataclass
class DecodeState:
    tokens_BL: jax.Array  # int32: left pads, prompt, new tokens (columns > cur not yet written)
    logp_BL: jax.Array  # float32: the model's log-probability of each new token (0 elsewhere)
    valid_BL: jax.Array  # bool: not a left pad
    cache: list  # per layer KV cache of S slots; slot j holds column offset + j
    kv_mask_BS: jax.Array  # bool: the cache slot is not a pad
    cur: jax.Array  # int32 scalar: column of the newest token, fed to the model next
    offset: jax.Array  # int32 scalar: column held by cache slot 0 (moves when the window slides)
    first: jax.Array  # int32 scalar: column of the first new token
    final: jax.Array  # int32 scalar: column of the last new token
    pos_B: jax.Array  # int32: position of the token at `cur` (real tokens before it in the window)
    done_B: jax.Array  # bool: the row has produced an EOS token
    keys_B: jax.Array  # one PRNG key per row
    beam: beam_lib.BeamState | None = None


@functools.partial(jax.jit, static_argnames=("config", "cache_len"))
def _prefill_jit(params, tokens_BQ, valid_BQ, slack, *, config: GPTConfig, cache_len: int):
    """(cache holding tokens_BQ[:, slack:] in slots 0.., kv_mask_BS, position of the next token)."""
    B, Q = tokens_BQ.shape
    positions_BQ = jnp.maximum(jnp.cumsum(valid_BQ, axis=1, dtype=jnp.int32) - 1, 0)
    kv_mask_BS = jnp.ones((B, cache_len), bool).at[:, :Q].set(valid_BQ)
    # The barrier keeps XLA from constant-folding the attention over the empty cache's zeros: at a few
    # hundred rows that folding took minutes of compilation (reductions of broadcast constants).
    empty = jax.lax.optimization_barrier(init_cache(config, B, cache_len))
    _, cache = GPT(config).apply(
        {"params": params}, tokens_BQ, positions_BT=positions_BQ, cache=empty, kv_mask_BS=kv_mask_BS
    )
    # Roll the `slack` leading pads out: slot j then holds column slack + j. The slots after the prefill
    # are written before they are attended to, so are marked real.
    roll = lambda x, axis: jnp.roll(x, -slack, axis=axis)  # noqa: E731
    cache = [{"k": roll(c["k"], 3), "v": roll(c["v"], 2), "end": Q - slack} for c in cache]  # BNHS, BNSH
    kv_mask_BS = jnp.where(jnp.arange(cache_len) < Q - slack, roll(kv_mask_BS, 1), True)
    return cache, kv_mask_BS, jnp.sum(valid_BQ, axis=1, dtype=jnp.int32)


def bucket(n: int) -> int:
    """n rounded up to a power of two (at least 16): nearby lengths share one compilation."""
    return max(16, 1 << (n - 1).bit_length())


def prefill(
    params, config: GPTConfig, tokens_BL: np.ndarray, valid_BL: np.ndarray, start: int, cache_len: int
):
    """Prefill of tokens_BL[:, start:], left-padded to a bucket: the first prefill and the window slides
    share one compilation when their buckets agree."""
    n = tokens_BL.shape[1] - start
    if n == 0:  # a one-token prompt: nothing to run through the model (and no compilation)
        B = tokens_BL.shape[0]
        return init_cache(config, B, cache_len), np.ones((B, cache_len), bool), np.zeros((B,), np.int32)
    Q = min(bucket(n), cache_len)
    tokens_BQ = np.zeros((tokens_BL.shape[0], Q), np.int32)
    valid_BQ = np.zeros((tokens_BL.shape[0], Q), bool)
    tokens_BQ[:, Q - n :] = tokens_BL[:, start:]
    valid_BQ[:, Q - n :] = valid_BL[:, start:]
    return _prefill_jit(params, tokens_BQ, valid_BQ, np.int32(Q - n), config=config, cache_len=cache_len)


def initial_state(
    params, config: GPTConfig, tokens_BL, valid_BL, P: int, final: int, keys_B, cache_len: int, num_beams
):
    """The state before the first new token: a prefill of all but the last prompt token; beam scores."""
    cache, kv_mask_BS, pos_B = prefill(
        params, config, tokens_BL[:, : P - 1], valid_BL[:, : P - 1], 0, cache_len
    )
    B, L = tokens_BL.shape
    beam = beam_lib.initial(B // num_beams, num_beams, L) if num_beams else None
    state = DecodeState(
        tokens_BL=tokens_BL,
        logp_BL=np.zeros(tokens_BL.shape, np.float32),
        valid_BL=valid_BL,
        cache=cache,
        kv_mask_BS=kv_mask_BS,
        cur=np.int32(P - 1),
        offset=np.int32(0),
        first=np.int32(P),
        final=np.int32(final),
        pos_B=pos_B,
        done_B=np.zeros((B,), bool),
        keys_B=keys_B,
        beam=beam,
    )
    return jax.device_put(state)


def slide(params, config: GPTConfig, state: DecodeState) -> DecodeState:
    """Restarts the window at the newest block_size // 2 tokens: a new cache, positions from 0."""
    cur, keep = int(state.cur), max(config.block_size // 2, 1)
    start = cur - (keep - 1)
    tokens_BL, valid_BL = np.asarray(state.tokens_BL)[:, :cur], np.asarray(state.valid_BL)[:, :cur]
    cache, kv_mask_BS, pos_B = prefill(params, config, tokens_BL, valid_BL, start, state.kv_mask_BS.shape[1])
    return state.replace(cache=cache, kv_mask_BS=kv_mask_BS, offset=jnp.int32(start), pos_B=pos_B)


def forward(params, config: GPTConfig, state: DecodeState) -> tuple[jax.Array, list]:
    """float32 logits_BV of the token after `cur`, and the cache with `cur` written."""
    token_B1 = jax.lax.dynamic_slice_in_dim(state.tokens_BL, state.cur, 1, axis=1)
    logits_B1V, cache = GPT(config).apply(
        {"params": params},
        token_B1,
        positions_BT=state.pos_B[:, None],
        cache=state.cache,
        kv_mask_BS=state.kv_mask_BS,
    )
    return logits_B1V[:, 0], cache


def history_of(state: DecodeState) -> History:
    """The tokens written so far, for the rules that look back (repetition penalty, n-grams)."""
    written_L = jnp.arange(state.tokens_BL.shape[1]) <= state.cur
    return History(state.tokens_BL, state.valid_BL & written_L[None, :], state.cur, state.first)


def finished(state: DecodeState, early_stopping) -> jax.Array:
    """True when no row needs more tokens (beams: HF's `_beam_search_has_unfinished_sequences`)."""
    if state.beam is None:
        return jnp.all(state.done_B)
    return beam_lib.finished(state.beam, early_stopping)


def pick(rules, logits_BV: jax.Array, history: History, keys_B: jax.Array) -> jax.Array:
    """Samples one token per row after the rules. After a TopK rule the later rules and the draw see only
    the k survivors (the same distribution, k wide instead of V: a 50k-wide draw costs ms per token). A row
    with tokens tied with the k-th draws V wide, so that the ties stay drawable (the TopK rule keeps them)."""
    draw = lambda logits_BX: jax.vmap(jax.random.categorical)(keys_B, logits_BX).astype(jnp.int32)  # noqa: E731
    i = next((i for i, r in enumerate(rules) if isinstance(r, TopK) and r.k < logits_BV.shape[-1]), None)
    if i is None:
        return draw(apply_rules(rules, logits_BV, history))
    k, logits_BV = rules[i].k, apply_rules(rules[:i], logits_BV, history)
    # The k + 1 largest: a token outside the top k ties with the k-th when the (k+1)-th equals it. Only the
    # whole top_k outputs are read: a slice of them not from 0 turns XLA's CPU TopK into a sort of all V
    # (measured 60x slower at V = 50257), so the (k+1)-th is masked, not sliced off.
    top_BX, index_BX = jax.lax.top_k(logits_BV, k + 1)
    in_k_X = jnp.arange(k + 1) < k
    tied_B = jnp.min(top_BX, axis=-1) == jnp.min(jnp.where(in_k_X, top_BX, jnp.inf), axis=-1)
    choice_B = draw(apply_rules(rules[i + 1 :], jnp.where(in_k_X, top_BX, -jnp.inf), history))
    token_B = jnp.take_along_axis(index_BX, choice_B[:, None], axis=1)[:, 0]
    wide_B = lambda: draw(apply_rules(rules[i:], logits_BV, history))  # noqa: E731
    return jax.lax.cond(jnp.any(tied_B), lambda: jnp.where(tied_B, wide_B(), token_B), lambda: token_B)


def _sample_step(params, config, state: DecodeState, rules, eos_E, greedy: bool) -> DecodeState:
    logits_BV, cache = forward(params, config, state)
    if greedy:
        token_B = jnp.argmax(apply_rules(rules, logits_BV, history_of(state)), axis=-1).astype(jnp.int32)
    else:
        keys_B = jax.vmap(jax.random.fold_in, (0, None))(state.keys_B, state.cur + 1 - state.first)
        token_B = pick(rules, logits_BV, history_of(state), keys_B)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV, axis=-1), token_B[:, None], axis=1)[:, 0]
    return advance(state, token_B, logp_B, cache, eos_E)


def advance(state: DecodeState, token_B, logp_B, cache: list, eos_E: jax.Array) -> DecodeState:
    """Writes the next tokens after `cur` (pads for finished rows) and moves `cur` to them."""
    token_B = jnp.where(state.done_B, 0, token_B)
    write = lambda x_BL, x_B: jax.lax.dynamic_update_slice_in_dim(x_BL, x_B[:, None], state.cur + 1, 1)  # noqa: E731
    return state.replace(
        tokens_BL=write(state.tokens_BL, token_B),
        logp_BL=write(state.logp_BL, jnp.where(state.done_B, 0.0, logp_B)),
        cache=cache,
        cur=state.cur + 1,
        pos_B=state.pos_B + 1,
        done_B=state.done_B | jnp.isin(token_B, eos_E),
    )


@functools.partial(jax.jit, static_argnames=("config", "mode", "early_stopping"), donate_argnames=("state",))
def run(params, state: DecodeState, rules, eos_E, length_penalty, stop_at, *, config, mode, early_stopping):
    """Decodes until column `stop_at` is written, every row is finished, or the cache is full."""
    cache_len = state.kv_mask_BS.shape[1]

    def cond(state):
        room = state.cur - state.offset < cache_len
        return (state.cur < stop_at) & room & ~finished(state, early_stopping)

    def body(state):
        if mode in BEAM_MODES:
            logits_RV, cache = forward(params, config, state)
            sample = mode == "beam_sample"
            return beam_lib.step(
                state,
                logits_RV,
                cache,
                history_of(state),
                rules,
                eos_E,
                length_penalty,
                early_stopping,
                sample,
            )
        return _sample_step(params, config, state, rules, eos_E, greedy=mode == "greedy")

    state = jax.lax.while_loop(cond, body, state)
    return state, finished(state, early_stopping)
