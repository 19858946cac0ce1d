"""Beam search bookkeeping, as Hugging Face's vectorised `_beam_search` keeps it: K beams per prompt in
rows b*K .. b*K+K-1 of gptjax.sample's DecodeState, the K best finished sequences so far, and HF's rule
for when the running beams can no longer beat them. gptjax.sample runs the model; this file picks beams."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gptjax.sampling import History, apply_rules

# Added to the scores of beams that must not be picked; HF's beam search uses the same constant.
NEG_SCORE = -1.0e9


@struct.dataclass
class BeamState:
    """Beam search over K beams per prompt; N prompts."""

    scores_BK: jax.Array  # running beams: sum of log-probabilities
    fin_tokens_BKL: jax.Array  # the K best finished sequences so far, best first
    fin_logp_BKL: jax.Array  # float32: the model's log-probability of each of their new tokens
    fin_scores_BK: jax.Array  # their length-penalised scores (NEG_SCORE for an empty slot)
    fin_done_BK: jax.Array  # bool: the slot holds a finished sequence
    fin_len_BK: jax.Array  # int32: its number of new tokens
    open_B: jax.Array  # bool: the running beams may still beat the finished ones


def initial(N: int, K: int, L: int) -> BeamState:
    """Before the first new token: only beam 0 is live, so the beams differ (HF); nothing finished."""
    scores_BK = np.zeros((N, K), np.float32)
    scores_BK[:, 1:] = NEG_SCORE
    return BeamState(
        scores_BK=scores_BK,
        fin_tokens_BKL=np.zeros((N, K, L), np.int32),
        fin_logp_BKL=np.zeros((N, K, L), np.float32),
        fin_scores_BK=np.full((N, K), NEG_SCORE, np.float32),
        fin_done_BK=np.zeros((N, K), bool),
        fin_len_BK=np.zeros((N, K), np.int32),
        open_B=np.ones((N,), bool),
    )


def finished(b: BeamState, early_stopping) -> jax.Array:
    """True when no prompt needs more steps (HF's `_beam_search_has_unfinished_sequences`)."""
    return ~jnp.any(b.open_B) | (jnp.all(b.fin_done_BK) & (early_stopping is True))


def step(state, logits_RV, cache, history: History, rules, eos_E, length_penalty, early_stopping, sample):
    """One step of HF's vectorised beam search (generation/utils.py `_beam_search`) on a
    gptjax.decode.DecodeState, given the model's logits for its R = N*K rows and the updated cache. With
    `sample`, the candidates are drawn without replacement in proportion to exp(score) (HF's multinomial;
    here the Gumbel-top-k trick) instead of taken best first."""
    b = state.beam
    N, K = b.scores_BK.shape
    V = logits_RV.shape[-1]
    model_logp_RV = jax.nn.log_softmax(logits_RV, axis=-1)
    logp_RV = apply_rules(rules, model_logp_RV, history)
    cand_BC = (logp_RV.reshape(N, K, V) + b.scores_BK[:, :, None]).reshape(N, K * V)
    # Keep (1 + number of EOS ids) * K candidates (at least 2K): K of them at least do not end.
    C = max(2, 1 + eos_E.shape[0]) * K
    if sample:
        # One key per prompt (its first row's), folded with the step as _sample_step does.
        keys_B = jax.vmap(jax.random.fold_in, (0, None))(state.keys_B[::K], state.cur + 1 - state.first)
        noise_BC = jax.vmap(lambda key: jax.random.gumbel(key, (K * V,), jnp.float32))(keys_B)
        index_BC = jax.lax.top_k(cand_BC + noise_BC, C)[1]
        top_BC = jnp.take_along_axis(cand_BC, index_BC, axis=1)
    else:
        top_BC, index_BC = jax.lax.top_k(cand_BC, C)
    parent_BC, token_BC = index_BC // V, (index_BC % V).astype(jnp.int32)
    cand_logp_BC = jnp.take_along_axis(model_logp_RV.reshape(N, K * V), index_BC, axis=1)
    new_len = state.cur + 2 - state.first  # new tokens, this one included
    ends_BC = jnp.isin(token_BC, eos_E) | (state.cur + 1 == state.final)

    # Finished: the ending candidates among the top K join the finished ones if they score better.
    tokens_BKL = state.tokens_BL.reshape(N, K, -1)
    cand_tokens_BCL = jnp.take_along_axis(tokens_BKL, parent_BC[:, :, None], axis=1)
    cand_tokens_BCL = cand_tokens_BCL.at[:, :, state.cur + 1].set(token_BC)
    logp_BKL = state.logp_BL.reshape(N, K, -1)
    cand_logp_BCL = jnp.take_along_axis(logp_BKL, parent_BC[:, :, None], axis=1)
    cand_logp_BCL = cand_logp_BCL.at[:, :, state.cur + 1].set(cand_logp_BC)
    just_done_BC = ends_BC & (jnp.arange(C) < K)[None, :]
    fin_score_BC = top_BC / new_len.astype(jnp.float32) ** length_penalty
    full_B1 = jnp.all(b.fin_done_BK, axis=1, keepdims=True) & (early_stopping is True)
    fin_score_BC += NEG_SCORE * (full_B1 | ~b.open_B[:, None] | ~just_done_BC)
    merged_BM = jnp.concatenate([b.fin_scores_BK, fin_score_BC], axis=1)
    pick_BK = jax.lax.top_k(merged_BM, K)[1]
    take = lambda a, c: jnp.take_along_axis(jnp.concatenate([a, c], axis=1), pick_BK, axis=1)  # noqa: E731
    new_len_BC = jnp.full((N, C), new_len, jnp.int32)
    take_rows = lambda a, c: jnp.take_along_axis(jnp.concatenate([a, c], axis=1), pick_BK[:, :, None], axis=1)  # noqa: E731

    # Running: the K best candidates that do not end continue.
    run_BC = top_BC + NEG_SCORE * ends_BC
    keep_BK = jax.lax.top_k(run_BC, K)[1]
    scores_BK = jnp.take_along_axis(run_BC, keep_BK, axis=1)
    rows_R = (jnp.take_along_axis(parent_BC, keep_BK, axis=1) + K * jnp.arange(N)[:, None]).reshape(-1)
    token_R = jnp.take_along_axis(token_BC, keep_BK, axis=1).reshape(-1)
    logp_R = jnp.take_along_axis(cand_logp_BC, keep_BK, axis=1).reshape(-1)
    cache = jax.tree_util.tree_map(lambda x: x[rows_R] if x.ndim else x, cache)
    tokens_RL = state.tokens_BL[rows_R]

    beam = BeamState(
        scores_BK=scores_BK,
        fin_tokens_BKL=take_rows(b.fin_tokens_BKL, cand_tokens_BCL),
        fin_logp_BKL=take_rows(b.fin_logp_BKL, cand_logp_BCL),
        fin_scores_BK=jnp.take_along_axis(merged_BM, pick_BK, axis=1),
        fin_done_BK=take(b.fin_done_BK, just_done_BC),
        fin_len_BK=take(b.fin_len_BK, new_len_BC),
        open_B=b.open_B,
    )
    # Can the best running beam still beat the worst finished one? (HF's `_check_early_stop_heuristic`)
    never = (early_stopping == "never") & (length_penalty > 0.0)
    best_len = jnp.where(never, state.final + 1 - state.first, new_len)
    best_B1 = scores_BK[:, :1] / best_len.astype(jnp.float32) ** length_penalty
    worst_BK = jnp.where(beam.fin_done_BK, jnp.min(beam.fin_scores_BK, axis=1, keepdims=True), NEG_SCORE)
    beam = beam.replace(open_B=beam.open_B & jnp.any(best_B1 > worst_BK, axis=1))
    return state.replace(
        tokens_BL=jax.lax.dynamic_update_slice_in_dim(tokens_RL, token_R[:, None], state.cur + 1, 1),
        logp_BL=jax.lax.dynamic_update_slice_in_dim(state.logp_BL[rows_R], logp_R[:, None], state.cur + 1, 1),
        valid_BL=state.valid_BL[rows_R],
        cache=cache,
        kv_mask_BS=state.kv_mask_BS[rows_R],
        cur=state.cur + 1,
        pos_B=state.pos_B[rows_R] + 1,
        beam=beam,
    )
