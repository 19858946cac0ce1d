"""Assisted generation (speculative decoding; HF's generate(assistant_model=...)): a small draft model
proposes tokens, the target model checks them all in one forward pass, and the text is the target's.

One iteration of the jitted `lax.while_loop` (Leviathan et al. 2023, Chen et al. 2023):
  * The draft proposes K = num_assistant_tokens tokens x_1..x_K, one model call each (the first call also
    feeds the token before `cur`, which a fully accepted iteration left out of the draft's cache).
  * The target runs the current token and the K proposals in one call (T = K + 1): p_i, the distribution
    of the token after x_i (x_0 the current token), for i = 0..K.
  * Greedy: the longest prefix of proposals equal to the target's argmax is kept, then the target's own
    argmax after it. Sampling: x_i is kept with probability min(1, p(x_i) / q(x_i)); at the first
    rejection a token is drawn from normalize(max(0, p - q)) instead; when all K are kept, one more from
    p_K. Either way the text has the target's distribution exactly (with its greedy text), and each
    iteration writes 1..K+1 tokens.
  * p and q are the target's and the draft's distributions after the same sampling rules
    (GenerateOptions.rules: penalties, bans, temperature, top-k, ...), each position with the History it
    would have had: the text up to the proposal before it.
  * Rollback: both caches keep their keys and values of rejected proposals, but attention reads only the
    slots before the cache's `end` (and those the call writes); setting `end` back to the accepted length
    hides the rest, which the next iteration overwrites.

Prompt lookup (HF's prompt_lookup_num_tokens; Saxena 2023, prompt-lookup-decoding) needs no draft model:
the proposals are the up to K tokens that followed the earliest earlier occurrence of the text's last n
tokens (n = max_matching_ngram_size down to 1, the longest that occurs with a continuation), as HF's
PromptLookupCandidateGenerator finds them; none when nothing occurs (the iteration writes the target's
token alone). A proposal is a draft that is sure of it (q one-hot), so the same checks keep the target's
distribution. It pays where the text repeats its prompt (summaries, edits, code, extraction).

Scope: one row at a time (rows are looped on the host with sample.py's per-row keys), greedy or sampling
(no beams), prompt + new tokens within both models' block_size (no sliding window), the same vocabulary.
"""

import functools
import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gptjax import decode, sample
from gptjax.model import GPT, GPTConfig, init_cache
from gptjax.sampling import BEAM_MODES, GenerateOptions, History, apply_rules

DEFAULT_NUM_ASSISTANT_TOKENS = 5  # HF's num_assistant_tokens default
DEFAULT_NGRAM = 2  # HF's max_matching_ngram_size default


@struct.dataclass
class AssistState:
    """One row (B = 1) being decoded with a draft model."""

    tokens_BL: jax.Array  # int32: prompt, new tokens; columns after `cur` hold stale proposals
    logp_BL: jax.Array  # float32: the target's log-probability of each new token (0 elsewhere)
    cache: list  # the target's KV cache: slot j holds column j; `end` = cur
    draft_cache: list  # the draft's KV cache: slot j holds column j - 1 (slot 0: a masked pad); `end` = cur
    # (prompt lookup: none, [])
    cur: jax.Array  # int32 scalar: column of the newest token, not yet run through either model
    first: jax.Array  # int32 scalar: column of the first new token
    final: jax.Array  # int32 scalar: column of the last new token
    done: jax.Array  # bool scalar: an EOS token came
    key: jax.Array  # the row's PRNG key
    proposed: jax.Array  # int32 scalar: proposals the target has checked
    accepted: jax.Array  # int32 scalar: proposals it kept
    calls: jax.Array  # int32 scalar: target model calls (iterations)


def _with_end(cache: list, end) -> list:
    """The cache with its fill level set to `end`: slots from `end` on are no longer attended to."""
    return [{**c, "end": jnp.asarray(end, jnp.int32)} for c in cache]


def _history(state: AssistState, tokens_BL: jax.Array, cur) -> History:
    """The text up to column `cur` (proposals included), for the rules that look back."""
    written_BL = (jnp.arange(tokens_BL.shape[1]) <= cur)[None, :]
    return History(tokens_BL, written_BL, cur, state.first)


def _rules_logits(rules, logits_V: jax.Array, history: History) -> jax.Array:
    return apply_rules(rules, logits_V[None], history)[0]


def _propose(params, config: GPTConfig, state: AssistState, rules, key, K: int, greedy: bool):
    """(tokens_BL with the K proposals after `cur`, q_KV: the draft's distribution of each, the draft's
    cache). Proposals past `final` are not computed (the target never keeps them)."""
    cur, S = state.cur, state.draft_cache[0]["v"].shape[2]
    kv_mask_BS = (jnp.arange(S) > 0)[None]  # slot 0 holds the pad standing for column -1

    def draft(tokens_BT, cols_T, cache):
        """Logits (vocab_size wide) after the last of tokens_BT at columns cols_T, and the cache."""
        logits_BTV, cache = GPT(config).apply(
            {"params": params},
            tokens_BT,
            positions_BT=jnp.maximum(cols_T, 0)[None],
            cache=cache,
            kv_mask_BS=kv_mask_BS,
        )
        return logits_BTV[0, -1, : config.vocab_size], cache

    # The columns cur - 1 and cur: the first was left out when the last iteration kept all K proposals.
    cols_2 = cur - 1 + jnp.arange(2)
    tokens_B2 = jnp.where(cols_2 >= 0, jnp.take(state.tokens_BL, jnp.maximum(cols_2, 0), axis=1), 0)
    logits_V, cache = draft(tokens_B2, cols_2, _with_end(state.draft_cache, cur))

    def body(carry, j):
        tokens_BL, logits_V, cache = carry
        q_logits_V = _rules_logits(rules, logits_V, _history(state, tokens_BL, cur + j))
        if greedy:
            x = jnp.argmax(q_logits_V).astype(jnp.int32)
        else:
            x = jax.random.categorical(jax.random.fold_in(key, j), q_logits_V).astype(jnp.int32)
        tokens_BL = jax.lax.dynamic_update_slice_in_dim(tokens_BL, x[None, None], cur + 1 + j, axis=1)
        # The next proposal needs x run through the draft, unless it would lie past `final`.
        col = cur + 1 + j
        logits_V, cache = jax.lax.cond(
            (j < K - 1) & (col < state.final),
            lambda: draft(x[None, None], col[None], cache),
            lambda: (logits_V, cache),
        )
        return (tokens_BL, logits_V, cache), jax.nn.softmax(q_logits_V)

    (tokens_BL, _, cache), q_KV = jax.lax.scan(body, (state.tokens_BL, logits_V, cache), jnp.arange(K))
    return tokens_BL, q_KV, cache


def _lookup(state: AssistState, K: int, N: int, V: int):
    """(tokens_BL with the proposals after `cur`, q_KV: each one's distribution, one-hot, their count) of
    prompt lookup with n-grams of up to N tokens (see the module's docstring); unused proposals are 0."""
    row_L, cur = state.tokens_BL[0], state.cur
    j_L = jnp.arange(row_L.shape[0])
    start, count = jnp.int32(0), jnp.int32(0)
    for n in range(1, N + 1):  # a longer n-gram found overrides a shorter one
        match_L = j_L + n <= cur  # a window j .. j + n - 1 with a token after it, up to `cur`
        for i in range(n):  # window j's i-th token is the i-th of the last n (rolled ones lie past cur)
            match_L &= jnp.roll(row_L, -i) == row_L[jnp.maximum(cur - n + 1 + i, 0)]
        found = jnp.any(match_L) & (n <= cur)  # HF: n-grams shorter than the text
        j = jnp.argmax(match_L)  # the earliest
        start = jnp.where(found, j + n, start)
        count = jnp.where(found, jnp.minimum(K, cur + 1 - (j + n)), count)
    valid_K = jnp.arange(K) < count
    x_K = jnp.where(valid_K, jax.lax.dynamic_slice_in_dim(row_L, start, K), 0)  # start + K < L: no clamp
    tokens_BL = jax.lax.dynamic_update_slice_in_dim(state.tokens_BL, x_K[None], cur + 1, axis=1)
    return tokens_BL, jax.nn.one_hot(x_K, V) * valid_K[:, None], count


def _score(params, config: GPTConfig, tokens_BL: jax.Array, state: AssistState, K: int):
    """(raw logits_TV of the target, row i predicting column cur + 1 + i, the target's cache): the current
    token and the K proposals in one call. Near the end of the cache the call starts a few columns earlier
    (those are written again, with the same values), so that its K + 1 writes fit; rows past
    final - cur are then meaningless, and never read."""
    S = state.cache[0]["v"].shape[2]
    start = jnp.minimum(state.cur, S - (K + 1))
    tokens_BT = jax.lax.dynamic_slice_in_dim(tokens_BL, start, K + 1, axis=1)
    logits_BTV, cache = GPT(config).apply(
        {"params": params},
        tokens_BT,
        positions_BT=(start + jnp.arange(K + 1, dtype=jnp.int32))[None],
        cache=_with_end(state.cache, start),
    )
    return jnp.roll(logits_BTV[0, :, : config.vocab_size], start - state.cur, axis=0), cache


def _step(params, draft_params, state: AssistState, rules, eos_E, *, config, draft_config, K, greedy, ngram):
    cur = state.cur
    key = jax.random.fold_in(state.key, cur)  # one key per iteration: `cur` grows every time
    if draft_config is None:  # prompt lookup
        tokens_BL, q_KV, count = _lookup(state, K, ngram, config.vocab_size)
        draft_cache = state.draft_cache
    else:
        tokens_BL, q_KV, draft_cache = _propose(
            draft_params, draft_config, state, rules, jax.random.fold_in(key, 0), K, greedy
        )
        count = K
    logits_TV, cache = _score(params, config, tokens_BL, state, K)
    # The target's rules at each position, with the History the text would have there.
    p_logits_TV = jax.vmap(lambda logits_V, c: _rules_logits(rules, logits_V, _history(state, tokens_BL, c)))(
        logits_TV, cur + jnp.arange(K + 1)
    )

    m = jnp.minimum(jnp.minimum(K, state.final - cur), count)  # proposals that count: those up to `final`
    x_K = jax.lax.dynamic_slice_in_dim(tokens_BL[0], cur + 1, K)
    in_range_K = jnp.arange(K) < m
    if greedy:
        ok_K = x_K == jnp.argmax(p_logits_TV[:K], axis=-1)
    else:
        p_KV = jax.nn.softmax(p_logits_TV[:K], axis=-1)
        p_K = jnp.take_along_axis(p_KV, x_K[:, None], axis=1)[:, 0]
        q_K = jnp.take_along_axis(q_KV, x_K[:, None], axis=1)[:, 0]
        u_K = jax.random.uniform(jax.random.fold_in(key, 1), (K,))
        ok_K = u_K * q_K < p_K  # probability min(1, p / q); q(x) > 0 as x was drawn from q
    n = jnp.sum(jnp.cumprod(ok_K & in_range_K))  # proposals kept: the longest run of accepted ones

    # The token after them: the target's own, from the residual max(0, p - q) after a rejection.
    p_logits_V = p_logits_TV[n]
    if greedy:
        y = jnp.argmax(p_logits_V)
    else:
        p_V = jax.nn.softmax(p_logits_V)
        residual_V = jnp.maximum(p_V - q_KV[jnp.minimum(n, K - 1)], 0.0)
        # p == q up to rounding leaves (almost) nothing: that rejection had (almost) no chance either.
        residual_V = jnp.where((n < m) & (jnp.sum(residual_V) > 0), residual_V, p_V)
        y = jax.random.categorical(jax.random.fold_in(key, 2), jnp.log(residual_V))
    new_T = jnp.where(jnp.arange(K + 1) < n, jnp.append(x_K, 0), 0).at[n].set(y.astype(jnp.int32))

    # Keep n + 1 tokens, fewer at an EOS token or at `final`.
    is_eos_T = jnp.isin(new_T, eos_E)
    eos_at = jnp.where(jnp.any(is_eos_T), jnp.argmax(is_eos_T), K + 1)
    keep = jnp.minimum(jnp.minimum(n + 1, eos_at + 1), state.final - cur)
    kept_T = jnp.arange(K + 1) < keep
    logp_T = jnp.take_along_axis(jax.nn.log_softmax(logits_TV, axis=-1), new_T[:, None], axis=1)[:, 0]
    write = lambda x_BL, x_T: jax.lax.dynamic_update_slice_in_dim(x_BL, x_T[None], cur + 1, axis=1)  # noqa: E731
    return state.replace(
        tokens_BL=write(tokens_BL, jnp.where(kept_T, new_T, 0)),
        logp_BL=write(state.logp_BL, jnp.where(kept_T, logp_T, 0.0)),
        cache=_with_end(cache, cur + keep),  # the rollback: rejected proposals' slots are no longer read
        draft_cache=_with_end(draft_cache, cur + keep),
        cur=cur + keep,
        done=jnp.any(is_eos_T & kept_T),
        proposed=state.proposed + m,
        accepted=state.accepted + n,
        calls=state.calls + 1,
    )


def loop(
    params,
    draft_params,
    state: AssistState,
    rules,
    eos_E,
    stop_at,
    *,
    config,
    draft_config,
    K,
    greedy,
    ngram=0,
):
    """Decodes one row until column `stop_at` is written (or passed) or an EOS token comes; draft_config
    None: prompt lookup with n-grams of up to `ngram` tokens. Not jitted: `run` is; tests vmap it over many
    rows."""
    step = functools.partial(_step, config=config, draft_config=draft_config, K=K, greedy=greedy, ngram=ngram)
    return jax.lax.while_loop(
        lambda s: (s.cur < stop_at) & ~s.done,
        lambda s: step(params, draft_params, s, rules, eos_E),
        state,
    )


run = jax.jit(
    loop, static_argnames=("config", "draft_config", "K", "greedy", "ngram"), donate_argnames=("state",)
)


# ----- Host side ----------------------------------------------------------------------------------------


def check(config: GPTConfig, draft_config: GPTConfig | None, options: GenerateOptions, K: int) -> None:
    """One-line errors for what assisted generation (draft_config None: prompt lookup) does not do."""
    if draft_config is None:
        return check_lookup(config, options)
    if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
        raise ValueError(f"num_assistant_tokens={K!r} must be an integer >= 1")
    if options.mode in BEAM_MODES:
        raise ValueError(
            f"assisted generation does greedy decoding or sampling, not beam search (num_beams="
            f"{options.num_beams}): set num_beams=1 or drop the assistant"
        )
    if options.prompt_lookup_num_tokens:
        raise ValueError(
            "prompt_lookup_num_tokens proposes tokens from the text itself, an assistant from a draft model: "
            "give one of them"
        )
    if draft_config.vocab_size != config.vocab_size:
        raise ValueError(
            f"the assistant's vocab_size={draft_config.vocab_size} differs from the model's "
            f"{config.vocab_size}: use a draft model trained with the model's tokenizer"
        )
    if K + 1 > config.block_size:
        raise ValueError(
            f"num_assistant_tokens={K} needs K + 1 <= the model's block_size={config.block_size}; lower it"
        )


def check_lookup(config: GPTConfig, options: GenerateOptions) -> None:
    """One-line errors for what prompt lookup does not do."""
    K, n = options.prompt_lookup_num_tokens, options.max_matching_ngram_size
    if K < 1 or (n is not None and n < 1):
        raise ValueError(f"prompt_lookup_num_tokens={K} and max_matching_ngram_size={n} must be >= 1")
    if options.mode in BEAM_MODES:
        raise ValueError(
            "prompt lookup does greedy decoding or sampling, not beam search (num_beams="
            f"{options.num_beams}): set num_beams=1 or drop prompt_lookup_num_tokens"
        )
    if options.prompt_lookup_num_tokens + 1 > config.block_size:
        raise ValueError(
            f"prompt_lookup_num_tokens={options.prompt_lookup_num_tokens} needs K + 1 <= the model's "
            f"block_size={config.block_size}; lower it"
        )


def initial_state(params, config, draft_params, draft_config, prompt, n_new: int, key, K: int):
    """The row's state before its first new token: the target's cache holds all but the last prompt token,
    the draft's all but the last two (its first call each iteration feeds those two; prompt lookup: no
    draft, draft_config None)."""
    P = len(prompt)
    models = (("model", config), ("assistant", draft_config)) if draft_config else (("model", config),)
    for name, c in models:
        if P + n_new > c.block_size:
            raise ValueError(
                f"a {P}-token prompt + {n_new} new tokens exceed the {name}'s block_size={c.block_size}; "
                "assisted generation does not slide the window: lower max_new_tokens or crop the prompt"
            )
    L = decode.bucket(P + n_new + K)  # room for K + 1 columns after the last `cur`
    S = min(config.block_size, max(decode.bucket(P + n_new), K + 1))
    tokens_BL = np.zeros((1, L), np.int32)
    tokens_BL[0, :P] = prompt
    cache = decode.prefill(params, config, tokens_BL[:, : P - 1], np.ones((1, P - 1), bool), 0, S)[0]
    if draft_config is None:
        draft_cache = []
    elif P == 1:
        draft_cache = init_cache(draft_config, 1, min(draft_config.block_size, decode.bucket(P + n_new)))
    else:  # a pad (slot 0, masked) for column -1, then the columns 0 .. P - 3
        pad_tokens = np.concatenate([np.zeros((1, 1), np.int32), tokens_BL[:, : P - 2]], axis=1)
        valid = np.arange(P - 1)[None] > 0
        S_draft = min(draft_config.block_size, decode.bucket(P + n_new))
        draft_cache = decode.prefill(draft_params, draft_config, pad_tokens, valid, 0, S_draft)[0]
    zero = np.int32(0)
    state = AssistState(
        tokens_BL=tokens_BL,
        logp_BL=np.zeros((1, L), np.float32),
        cache=_with_end(cache, P - 1),
        draft_cache=_with_end(draft_cache, P - 1),
        cur=np.int32(P - 1),
        first=np.int32(P),
        final=np.int32(P + n_new - 1),
        done=np.bool_(False),
        key=key,
        proposed=zero,
        accepted=zero,
        calls=zero,
    )
    return jax.device_put(state)


def generate(
    params,
    config: GPTConfig,
    draft_params,
    draft_config: GPTConfig,
    prompts,
    options: GenerateOptions,
    on_chunk: Callable[[np.ndarray], bool] | None = None,
    chunk: int | None = None,
    *,
    custom: Sequence = (),
    num_assistant_tokens: int = DEFAULT_NUM_ASSISTANT_TOKENS,
) -> list[list[tuple[np.ndarray, np.ndarray, dict]]]:
    """For each prompt, num_return_sequences (new token ids, the target's log-probabilities, stats) with
    stats = {"proposed", "accepted", "calls"} (target model calls); the rows one after another, each with
    the random key that sample.generate_ids gives it. on_chunk(new_tokens_1N) sees one row at a time.
    draft_params and draft_config None: prompt lookup (options.prompt_lookup_num_tokens proposals at a
    time, n-grams of up to options.max_matching_ngram_size tokens)."""
    options = options or GenerateOptions()
    K = num_assistant_tokens if draft_config is not None else options.prompt_lookup_num_tokens
    ngram = 0 if draft_config is not None else options.max_matching_ngram_size or DEFAULT_NGRAM
    check(config, draft_config, options, K)
    prompts, n_new = sample._checked(config, prompts, options)
    rules = options.rules(prompt_len=max(map(len, prompts)), custom=custom)
    params, config = decode.for_decoding(params, config)
    if draft_config is not None:
        draft_params, draft_config = decode.for_decoding(draft_params, draft_config)
    eos_E = jnp.asarray(options.eos_token_id or (), jnp.int32)
    greedy, R = options.mode == "greedy", options.num_return_sequences
    seed = jax.random.key(options.seed, impl="philox4x32")
    out = []
    for prompt in prompts:
        crc = zlib.crc32(np.asarray(prompt, np.int32).tobytes())  # as sample._prepare: the same keys
        keys = sample._row_keys(seed, np.full(R, crc, np.uint32), np.arange(R, dtype=np.uint32))
        rows = []
        for r in range(R):
            state = initial_state(params, config, draft_params, draft_config, prompt, n_new, keys[r], K)
            P, final = len(prompt), len(prompt) + n_new - 1
            cur = P - 1
            while cur < final:
                stop_at = final if on_chunk is None else min(cur + (chunk or sample.STOP_CHECK_CHUNK), final)
                state = run(
                    params,
                    draft_params,
                    state,
                    rules,
                    eos_E,
                    jnp.int32(stop_at),
                    config=config,
                    draft_config=draft_config,
                    K=K,
                    greedy=greedy,
                    ngram=ngram,
                )
                cur = int(state.cur)
                if on_chunk is not None and on_chunk(np.asarray(state.tokens_BL)[:, P : cur + 1]):
                    break
                if bool(state.done):
                    break
            stats = {k: int(getattr(state, k)) for k in ("proposed", "accepted", "calls")}
            new = np.asarray(state.tokens_BL)[0, P : cur + 1]
            rows.append((new, np.asarray(state.logp_BL)[0, P : cur + 1], stats))
        out.append(rows)
    return out


def load_assistant(assistant: Any, tokenizer: Any = None) -> tuple[Any, GPTConfig]:
    """(params, config) of the draft model: a workdir or a (params, GPTConfig, tokenizer) tuple (as
    sample.load takes), or a (params, GPTConfig) pair where no `tokenizer` is given to compare with."""
    if isinstance(assistant, tuple) and len(assistant) == 2 and tokenizer is None:
        return assistant[0], assistant[1]
    if not (
        isinstance(assistant, str | os.PathLike)
        or (isinstance(assistant, tuple) and len(assistant) in (3, 4))
    ):
        raise ValueError("assistant must be a workdir or a (params, GPTConfig, tokenizer) tuple")
    params, config, draft_tokenizer, _ = sample.load(assistant)
    if tokenizer is not None and draft_tokenizer.to_json() != tokenizer.to_json():
        raise ValueError(
            "the assistant's tokenizer differs from the model's: assisted generation needs the same token "
            "ids; use a draft model trained with the model's tokenizer"
        )
    return params, config
