"""What to generate: GenerateOptions (Hugging Face generate()'s names and meanings) and the sampling
rules it builds: logits_BV -> logits_BV, each a small frozen dataclass with one method, applied in HF's
order (biases, penalties, bans, then temperature, then top-k / top-p / min-p / typical / epsilon / eta)
by gptjax.decode.

Rule numbers are pytree leaves (changing them does not recompile); sizes and token ids are static fields.
"""

import dataclasses
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DEFAULT_MAX_NEW_TOKENS = 100
BEAM_MODES = ("beam", "beam_sample")


# ----- Options ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """What to generate. Options with a name from HF's generate() have HF's meaning."""

    max_new_tokens: int | None = None  # new tokens per sequence (default DEFAULT_MAX_NEW_TOKENS)
    max_length: int | None = None  # longest prompt + new tokens; max_new_tokens wins when both are set
    do_sample: bool | None = None  # None: sample unless temperature == 0 or num_beams > 1
    temperature: float = 1.0  # divides the logits; 0 means greedy
    top_k: int | None = None  # keep the k most likely tokens; None or 0 keeps all (HF's default is 50)
    top_p: float | None = None  # keep the smallest set of most likely tokens with mass >= top_p
    min_p: float | None = None  # keep tokens at least min_p times as likely as the most likely one
    typical_p: float | None = None  # keep the tokens nearest the entropy in surprise, mass >= typical_p
    epsilon_cutoff: float | None = None  # drop tokens less likely than this (0 keeps all)
    eta_cutoff: float | None = None  # drop tokens below min(eta, sqrt(eta) * exp(-entropy)) (0 keeps all)
    min_new_tokens: int | None = None  # no EOS token before this many new tokens
    min_length: int | None = None  # no EOS token before prompt + new tokens reach this length
    repetition_penalty: float | None = None  # > 1 makes tokens already in the text less likely
    no_repeat_ngram_size: int | None = None  # n > 0: no n-gram of tokens occurs twice
    bad_words_ids: Sequence[Sequence[int]] | None = None  # token sequences never generated
    sequence_bias: dict | Sequence | None = None  # {(ids...): bias} or [[ids, bias]]: logit bias of ids[-1]
    suppress_tokens: Sequence[int] | None = None  # token ids never generated
    begin_suppress_tokens: Sequence[int] | None = None  # token ids never generated first
    num_return_sequences: int = 1  # sequences per prompt: samples, or the best beams
    num_beams: int = 1  # > 1: beam search (deterministic; with do_sample=True, beam sampling)
    length_penalty: float = 1.0  # beam search ranks by sum(log p) / new_length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False (HF's heuristic) or "never"
    eos_token_id: int | Sequence[int] | None = None  # a sequence ends after any of these tokens
    stop: str | Sequence[str] = ()  # the text ends before the first of these strings (not included)
    seed: int = 0  # same seed, same text (a prompt given twice in one batch gets the same text twice)
    # K > 0: prompt lookup decoding (gptjax.assisted): up to K tokens that followed an earlier occurrence of
    # the text's last n tokens (n <= max_matching_ngram_size, default 2) proposed, checked in one model call
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None

    def __post_init__(self):
        optional = (
            "max_new_tokens",
            "max_length",
            "min_new_tokens",
            "min_length",
            "top_k",
            "no_repeat_ngram_size",
            "prompt_lookup_num_tokens",
            "max_matching_ngram_size",
        )
        for name in (*optional, "num_return_sequences", "num_beams", "seed"):
            if getattr(self, name) is not None or name not in optional:
                object.__setattr__(self, name, _integer(name, getattr(self, name)))
        optional = ("top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty")
        for name in ("temperature", "length_penalty", *optional):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) or (value is None and name in optional)):
                raise ValueError(f"{name}={value!r} must be a number")
        if not (self.do_sample is None or isinstance(self.do_sample, bool | np.bool_)):
            raise ValueError(f"do_sample={self.do_sample!r} must be True, False or None")
        eos = self.eos_token_id
        if isinstance(eos, str | bytes):
            raise ValueError(f"eos_token_id={eos!r} must be token ids, not text: give tokenizer.eos_id")
        eos = () if eos is None else (eos,) if np.ndim(eos) == 0 else tuple(eos)
        object.__setattr__(self, "eos_token_id", tuple(_integer("eos_token_id", e) for e in eos) or None)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, list | tuple):  # the checks below name what its items must be
            raise ValueError(f"stop={self.stop!r} must be a string or a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(stop))
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _token_list(name, getattr(self, name)))
        if self.bad_words_ids is not None:
            words = self.bad_words_ids
            if isinstance(words, str | bytes) or any(np.ndim(w) != 1 for w in words):
                raise ValueError(
                    f"bad_words_ids={words!r} must be a list of token-id lists; wrap one word as [[ids]]"
                )
            object.__setattr__(self, "bad_words_ids", tuple(_token_list("bad_words_ids", w) for w in words))
        if self.sequence_bias is not None:
            object.__setattr__(self, "sequence_bias", _sequence_bias(self.sequence_bias))
        checks = [
            (self.max_new_tokens is None or self.max_new_tokens > 0, "max_new_tokens={} must be > 0"),
            (self.max_length is None or self.max_length > 0, "max_length={} must be > 0"),
            (self.min_new_tokens is None or self.min_new_tokens >= 0, "min_new_tokens={} must be >= 0"),
            (self.min_length is None or self.min_length >= 0, "min_length={} must be >= 0"),
            (self.temperature >= 0, "temperature={} must be >= 0 (0 is greedy)"),
            (self.top_k is None or self.top_k >= 0, "top_k={} must be >= 0 (0 or None keeps all)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p={} must be in (0, 1]"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p={} must be in [0, 1]"),
            (self.typical_p is None or 0 < self.typical_p <= 1, "typical_p={} must be in (0, 1]"),
            (
                self.epsilon_cutoff is None or 0 <= self.epsilon_cutoff < 1,
                "epsilon_cutoff={} must be in [0, 1) (0 keeps all)",
            ),
            (
                self.eta_cutoff is None or 0 <= self.eta_cutoff < 1,
                "eta_cutoff={} must be in [0, 1) (0 keeps all)",
            ),
            (
                self.repetition_penalty is None or self.repetition_penalty > 0,
                "repetition_penalty={} must be > 0",
            ),
            (
                self.no_repeat_ngram_size is None or self.no_repeat_ngram_size >= 0,
                "no_repeat_ngram_size={} < 0",
            ),
            (self.num_return_sequences >= 1, "num_return_sequences={} must be >= 1"),
            (self.num_beams >= 1, "num_beams={} must be >= 1"),
            (0 <= self.seed < 2**32, "seed={} must be in [0, 2**32) (the Philox key holds 32 bits)"),
            (
                self.early_stopping in (True, False, "never"),
                "early_stopping={!r}: use True, False or 'never'",
            ),
            (all(e >= 0 for e in self.eos_token_id or ()), "eos_token_id={} must be token ids >= 0"),
            (
                all(isinstance(s, str) and s for s in self.stop),
                "stop={!r} must be a string or a list of non-empty strings",
            ),
            (all(self.bad_words_ids or ()), "bad_words_ids={} must not hold an empty list"),
        ]
        for ok, message in checks:
            if not ok:
                name = message.split("=")[0]
                raise ValueError(message.format(getattr(self, name)))
        if self.do_sample and self.temperature == 0:
            raise ValueError("temperature=0 means greedy decoding; it contradicts do_sample=True")
        if self.mode in BEAM_MODES and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} must be <= num_beams={self.num_beams}"
            )
        if self.mode == "greedy" and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs sampling or beam search: greedy "
                "decoding gives one sequence per prompt"
            )

    @property
    def mode(self) -> str:
        """'greedy', 'sample', 'beam' (beam search) or 'beam_sample' (do_sample=True with num_beams > 1:
        HF's beam sampling, the beams drawn from the scores instead of taken best first)."""
        if self.num_beams > 1:
            return "beam_sample" if self.do_sample else "beam"
        return "greedy" if self.do_sample is False or self.temperature == 0 else "sample"

    def rules(self, prompt_len: int = 0, custom: Sequence = ()) -> tuple:
        """Rules in HF's order: biases, penalties and bans (every mode), the `custom` ones (see
        `custom_rule`), then temperature, top-k, top-p, min-p, typical, epsilon and eta (sampling).
        prompt_len: the longest prompt as given, which min_length counts (HF)."""
        rules = []
        bias = {} if self.bad_words_ids is None else {w: -np.inf for w in self.bad_words_ids}
        for word in self.bad_words_ids or ():  # HF never bans an EOS token on its own (it ends the text)
            if len(word) == 1 and word[0] in (self.eos_token_id or ()):
                del bias[word]
        if self.sequence_bias:
            rules.append(SequenceBias.of(self.sequence_bias))
        if self.repetition_penalty not in (None, 1.0):
            rules.append(RepetitionPenalty(float(self.repetition_penalty)))
        if self.no_repeat_ngram_size:
            rules.append(NoRepeatNGram(self.no_repeat_ngram_size))
        if bias:
            rules.append(SequenceBias.of(tuple(bias.items())))
        min_new = max(self.min_new_tokens or 0, (self.min_length or 0) - prompt_len)
        if min_new > 0 and self.eos_token_id:
            rules.append(MinNewTokens(min_new, self.eos_token_id))
        if self.suppress_tokens:
            rules.append(Suppress(self.suppress_tokens))
        if self.begin_suppress_tokens:
            rules.append(Suppress(self.begin_suppress_tokens, first_only=True))
        rules.extend(custom_rule(r) for r in custom)
        if self.mode in ("sample", "beam_sample"):
            # Beam sampling keeps at least one token per beam that does not end it, so that the beams
            # can differ and go on (HF's min_tokens_to_keep: 1 + the number of EOS ids, at least 2).
            keep = max(2, 1 + len(self.eos_token_id or ())) if self.mode == "beam_sample" else 1
            if self.temperature != 1.0:
                rules.append(Temperature(float(self.temperature)))
            if self.top_k:
                rules.append(TopK(max(self.top_k, keep)))
            if self.top_p is not None and self.top_p < 1.0:
                rules.append(TopP(float(self.top_p), keep))
            if self.min_p:
                rules.append(MinP(float(self.min_p), keep))
            if self.typical_p is not None and self.typical_p < 1.0:
                rules.append(Typical(float(self.typical_p), keep))
            if self.epsilon_cutoff:
                rules.append(EpsilonCutoff(float(self.epsilon_cutoff), min_keep=keep))
            if self.eta_cutoff:
                rules.append(EpsilonCutoff(float(self.eta_cutoff), eta=True, min_keep=keep))
        return tuple(rules)


def _integer(name: str, value) -> int:
    """value as a Python int (numpy integers too): floats and text are refused, never truncated."""
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} must be an integer") from None


def _token_list(name: str, ids) -> tuple[int, ...]:
    """A list of token ids (>= 0) as a tuple of ints; text and nested lists are refused."""
    if isinstance(ids, str | bytes) or np.ndim(ids) != 1:
        raise ValueError(f"{name}={ids!r} must be a list of token ids")
    ids = tuple(_integer(name, i) for i in ids)
    if any(i < 0 for i in ids):
        raise ValueError(f"{name}={list(ids)} must be token ids >= 0")
    return ids


def _sequence_bias(bias) -> tuple[tuple[tuple[int, ...], float], ...]:
    """HF's sequence_bias, {(ids...): bias} or [[ids, bias], ...], as ((ids, bias), ...)."""
    pairs = bias.items() if isinstance(bias, dict) else bias
    try:
        pairs = [(ids, value) for ids, value in pairs]
        if any(isinstance(ids, str | bytes) or np.ndim(ids) != 1 for ids, _ in pairs):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(
            f"sequence_bias={bias!r} must be {{(token ids...): bias}} or [[token ids, bias], ...]"
        ) from None
    out = {}  # a word given twice keeps its last bias (HF)
    for ids, value in pairs:
        ids = _token_list("sequence_bias", ids)
        if not ids or not isinstance(value, numbers.Real):
            raise ValueError(f"sequence_bias: ({ids}, {value!r}) needs non-empty token ids and a number")
        out[ids] = float(value)
    return tuple(out.items())


# ----- Sampling rules ----------------------------------------------------------------------------------


@struct.dataclass
class History:
    """Each row's text so far (left pads, prompt, new tokens): what the penalties look at."""

    tokens_BL: jax.Array  # int32
    mask_BL: jax.Array  # bool: a real token (not a pad) that is already written
    cur: jax.Array  # int32 scalar: the column of the newest token
    first: jax.Array = 0  # int32 scalar: the column of the first new token (0: all the text is new)

    def last(self, n: int) -> tuple[jax.Array, jax.Array]:
        """(the newest n tokens of each row [B, n], whether the row has n real tokens so far [B])."""
        cols_N = self.cur - (n - 1) + jnp.arange(n)
        ok_B = jnp.all((cols_N >= 0)[None, :] & jnp.take(self.mask_BL, jnp.clip(cols_N, 0), axis=1), axis=1)
        return jnp.take(self.tokens_BL, jnp.clip(cols_N, 0), axis=1), ok_B


@struct.dataclass
class RepetitionPenalty:
    """Divides positive, multiplies negative logits of tokens already in the text (Keskar et al. 2019)."""

    penalty: float

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        seen_BV = _scatter_any(logits_BV.shape, history.tokens_BL, history.mask_BL)
        penalized_BV = jnp.where(logits_BV < 0, logits_BV * self.penalty, logits_BV / self.penalty)
        return jnp.where(seen_BV, penalized_BV, logits_BV)


@struct.dataclass
class NoRepeatNGram:
    """Forbids every token that would complete an n-gram already in the text (HF's no_repeat_ngram_size)."""

    n: int = struct.field(pytree_node=False)

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        n, tokens_BL, mask_BL = self.n, history.tokens_BL, history.mask_BL
        J = tokens_BL.shape[1] - n + 1  # n-grams start at columns 0..J-1
        if J <= 0:
            return logits_BV
        # The newest n-1 tokens: a repeat is an earlier n-gram that starts with them.
        last_BM, last_ok_B = history.last(n - 1)
        repeat_BJ = last_ok_B[:, None] & mask_BL[:, n - 1 :]
        for i in range(n - 1):
            repeat_BJ &= mask_BL[:, i : i + J] & (tokens_BL[:, i : i + J] == last_BM[:, i : i + 1])
        banned_BV = _scatter_any(logits_BV.shape, tokens_BL[:, n - 1 :], repeat_BJ)
        return jnp.where(banned_BV, -jnp.inf, logits_BV)


@struct.dataclass
class SequenceBias:
    """Adds a bias to the logit of each sequence's last token where the text ends with the rest of the
    sequence (HF's sequence_bias; bad_words_ids are sequences biased by -inf). Left pads never match."""

    words: tuple = struct.field(pytree_node=False)  # token-id tuples
    biases: jax.Array  # float32 [number of words]

    @classmethod
    def of(cls, pairs) -> "SequenceBias":
        return cls(tuple(w for w, _ in pairs), np.asarray([b for _, b in pairs], np.float32))

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        bias_BV = jnp.zeros_like(logits_BV)
        for m in sorted({len(w) - 1 for w in self.words}):  # words grouped by prefix length m
            group = [i for i, w in enumerate(self.words) if len(w) - 1 == m]
            last_W = jnp.asarray([self.words[i][-1] for i in group], jnp.int32)
            bias_W = self.biases[np.asarray(group)].astype(logits_BV.dtype)
            if m == 0:
                match_BW = jnp.ones((logits_BV.shape[0], len(group)), bool)
            else:
                prefix_WM = jnp.asarray([self.words[i][:-1] for i in group], jnp.int32)
                last_BM, ok_B = history.last(m)
                match_BW = ok_B[:, None] & jnp.all(last_BM[:, None, :] == prefix_WM[None], axis=-1)
            bias_BV = bias_BV.at[:, last_W].add(jnp.where(match_BW, bias_W, 0.0))
        return logits_BV + bias_BV


@struct.dataclass
class MinNewTokens:
    """Forbids the EOS tokens until n new tokens are written (HF's min_new_tokens)."""

    n: int
    eos: tuple = struct.field(pytree_node=False)

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        early = history.cur + 1 - history.first < self.n  # the new tokens written so far
        is_eos_V = jnp.isin(jnp.arange(logits_BV.shape[-1]), jnp.asarray(self.eos, jnp.int32))
        return jnp.where(early & is_eos_V[None, :], -jnp.inf, logits_BV)


@struct.dataclass
class Suppress:
    """Forbids the given tokens: always, or as the first new token only (HF's suppress_tokens and
    begin_suppress_tokens)."""

    ids: tuple = struct.field(pytree_node=False)
    first_only: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        ban_V = jnp.isin(jnp.arange(logits_BV.shape[-1]), jnp.asarray(self.ids, jnp.int32))
        if self.first_only:
            ban_V &= history.cur + 1 == history.first
        return jnp.where(ban_V[None, :], -jnp.inf, logits_BV)


@struct.dataclass
class Temperature:
    """Divides the logits: < 1 sharpens the distribution, > 1 flattens it."""

    temperature: float

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        return logits_BV / self.temperature


@struct.dataclass
class TopK:
    """Keeps the k largest logits (and any tied with the k-th, as HF)."""

    k: int = struct.field(pytree_node=False)

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        if self.k >= logits_BV.shape[-1]:
            return logits_BV
        kth_B1 = jax.lax.top_k(logits_BV, self.k)[0][:, -1:]
        return jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)


@struct.dataclass
class TopP:
    """Keeps the smallest set of most likely tokens whose probabilities sum to >= p (nucleus sampling),
    and any token tied with the least likely one kept (HF drops such ties by their place in its sort)."""

    p: float
    min_keep: int = struct.field(pytree_node=False, default=1)  # the most likely min_keep always stay

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        # As HF: sort ascending and drop the tokens whose cumulative mass stays <= 1 - p (never the top
        # min_keep ones).
        sorted_BV = jnp.sort(logits_BV, axis=-1)
        cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
        n_drop_B1 = jnp.sum(cum_BV[:, : -self.min_keep] <= 1 - self.p, axis=-1, keepdims=True)
        min_kept_B1 = jnp.take_along_axis(sorted_BV, n_drop_B1, axis=-1)
        return jnp.where(logits_BV < min_kept_B1, -jnp.inf, logits_BV)


@struct.dataclass
class MinP:
    """Keeps tokens whose probability is at least p times the most likely token's (Nguyen et al. 2024)."""

    p: float
    min_keep: int = struct.field(pytree_node=False, default=1)  # the most likely min_keep always stay

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        probs_BV = jax.nn.softmax(logits_BV, axis=-1)
        threshold_B1 = self.p * jnp.max(probs_BV, axis=-1, keepdims=True)
        if self.min_keep > 1:
            kth_B1 = jax.lax.top_k(probs_BV, min(self.min_keep, probs_BV.shape[-1]))[0][:, -1:]
            threshold_B1 = jnp.minimum(threshold_B1, kth_B1)
        return jnp.where(probs_BV < threshold_B1, -jnp.inf, logits_BV)


@struct.dataclass
class Typical:
    """Keeps the tokens whose surprise (-log p) is nearest the entropy, the fewest holding mass >= p
    (locally typical sampling, Meister et al. 2022; HF's typical_p)."""

    p: float
    min_keep: int = struct.field(pytree_node=False, default=1)  # the min_keep most typical always stay

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
        probs_BV = jnp.exp(logp_BV)
        entropy_B1 = _entropy(probs_BV, logp_BV)
        shift_BV = jnp.abs(-logp_BV - entropy_B1)  # +inf for a token already ruled out
        order_BV = jnp.argsort(shift_BV, axis=-1)
        sorted_BV = jnp.take_along_axis(shift_BV, order_BV, axis=-1)
        cum_BV = jnp.cumsum(jnp.take_along_axis(probs_BV, order_BV, axis=-1), axis=-1)
        last_B1 = jnp.minimum(jnp.sum(cum_BV < self.p, axis=-1, keepdims=True), logits_BV.shape[-1] - 1)
        bound_B1 = jnp.maximum(
            jnp.take_along_axis(sorted_BV, last_B1, axis=-1), sorted_BV[:, self.min_keep - 1 : self.min_keep]
        )
        return jnp.where(shift_BV > bound_B1, -jnp.inf, logits_BV)


@struct.dataclass
class EpsilonCutoff:
    """Drops tokens less likely than epsilon (Hewitt et al. 2022; HF's epsilon_cutoff); with `eta`, the
    bound is min(epsilon, sqrt(epsilon) * exp(-entropy)) instead (HF's eta_cutoff)."""

    epsilon: float
    eta: bool = struct.field(pytree_node=False, default=False)
    min_keep: int = struct.field(pytree_node=False, default=1)  # the most likely min_keep always stay

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
        probs_BV = jnp.exp(logp_BV)
        bound_B1 = jnp.full((logits_BV.shape[0], 1), self.epsilon, jnp.float32)
        if self.eta:
            entropy_B1 = _entropy(probs_BV, logp_BV)
            bound_B1 = jnp.minimum(bound_B1, jnp.sqrt(self.epsilon) * jnp.exp(-entropy_B1))
        kth_B1 = jax.lax.top_k(logits_BV, min(self.min_keep, logits_BV.shape[-1]))[0][:, -1:]
        return jnp.where((probs_BV < bound_B1) & (logits_BV < kth_B1), -jnp.inf, logits_BV)


def _entropy(probs_BV: jax.Array, logp_BV: jax.Array) -> jax.Array:
    """[B, 1] entropy in nats; tokens ruled out (p = 0, log p = -inf) add nothing."""
    return -jnp.sum(jnp.where(probs_BV > 0, probs_BV * logp_BV, 0.0), axis=-1, keepdims=True)


@struct.dataclass
class Custom:
    """A user's function (logits_BV, history) -> logits_BV as a rule; a new function compiles anew."""

    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, logits_BV: jax.Array, history: History) -> jax.Array:
        return self.fn(logits_BV, history)


def custom_rule(rule) -> Any:
    """A user's rule (HF's logits_processor): a flax.struct dataclass with __call__(logits_BV, history),
    whose array fields change without compiling again, or any function (logits_BV, history) -> logits_BV.
    It runs inside the jitted decode loop, after the built-in penalties and bans and before temperature
    and the filters, on float32 logits_BV [rows, V] (beam search: log-probabilities, as HF)."""
    if dataclasses.is_dataclass(rule) and getattr(rule, "_flax_dataclass", False) and callable(rule):
        return rule
    if callable(rule):
        return Custom(rule)
    raise ValueError(
        f"logits_processor item {rule!r} must be a function (logits_BV, history) -> logits_BV or a "
        "flax.struct dataclass with that __call__"
    )


def _scatter_any(shape_BV: tuple[int, int], ids_BL: jax.Array, where_BL: jax.Array) -> jax.Array:
    """bool [B, V]: True at [b, ids_BL[b, l]] for every l where where_BL[b, l]."""
    rows_BL = jnp.broadcast_to(jnp.arange(shape_BV[0])[:, None], ids_BL.shape)
    return jnp.zeros(shape_BV, jnp.int32).at[rows_BL, ids_BL].add(where_BL.astype(jnp.int32)) > 0


def apply_rules(rules: Sequence, logits_BV: jax.Array, history: History) -> jax.Array:
    for rule in rules:
        logits_BV = rule(logits_BV, history)
    return logits_BV
