"""Generation: a jitted prefill + KV-cache decode loop (sampling, greedy, beam search, beam sampling).

How `generate_ids` runs:
  * Prompts longer than the context are cropped on the left (with a warning). The batch is left-padded
    to the longest prompt, so every row writes its next token into the same column `cur`; a key mask
    hides the pads and positions count real tokens only (a row's first token is position 0), so each
    row gives the tokens its prompt gives alone.
  * Prefill runs all but the last prompt token through the model in one pass and fills the KV cache.
    Its length is rounded up to a power of two (more left pads, rolled out of the cache afterwards),
    so that nearby prompt lengths share one compilation; so are the cache and the token buffer.
  * Decoding is one jitted `lax.while_loop` over a DecodeState: each iteration feeds the token at `cur`
    to the model, applies the rules to its logits, picks the next token and writes it at `cur + 1`.
    It stops at the requested length, when every row has produced an EOS token (beam search: when no
    beam can still improve the finished ones, as HF decides it), or when the cache is full. Random
    numbers come from per-row Philox keys (seed, prompt, sample index) folded with the step. Beside each
    new token the loop keeps its log-probability under the model (the log-softmax of the raw logits,
    before any rule), which beams carry along as they are reordered: Completion.logprobs.
  * One decoded row of a large model on CPU reads its kernels transposed (`decode.for_matvec`): XLA's CPU
    matrix-vector product streams [out, in] weights faster than [in, out] ones.
  * Past the context the window slides: the newest block_size // 2 tokens are run through prefill again
    (a new cache, positions from 0) and decoding goes on, so each new token sees between block_size // 2
    and block_size tokens. Left pads take room in the window, so a short row of a ragged batch may slide
    earlier than it would alone.
  * The loop can also stop after a chunk of tokens and go on from its state (the same compiled code):
    the host prints text as it comes (streaming, one token per chunk) or checks stop strings between
    chunks, and stops when every row has hit one. Stop strings are looked for in the new text only and
    are cut off with what follows; beam search decodes to the end, then cuts.
"""

import dataclasses
import operator
import os
import pathlib
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import decode
from gptjax.data.prompts import prompt_ids
from gptjax.model import GPTConfig
from gptjax.sampling import (  # noqa: F401  (re-exported: gptjax.sample.TopK etc.)
    BEAM_MODES,
    DEFAULT_MAX_NEW_TOKENS,
    EpsilonCutoff,
    GenerateOptions,
    History,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    SequenceBias,
    Suppress,
    Temperature,
    TopK,
    TopP,
    Typical,
    apply_rules,
)

STOP_CHECK_CHUNK = 32  # tokens decoded between two host-side checks of stop strings


# ----- Host side: token ids in, token ids out ----------------------------------------------------------


@jax.jit
def _row_keys(key, prompt_hash_B, copy_B):
    """fold_in(fold_in(key, prompt hash), copy index) per row (jitted: eagerly it costs ms)."""
    fold = lambda h, r: jax.random.fold_in(jax.random.fold_in(key, h), r)  # noqa: E731
    return jax.vmap(fold)(prompt_hash_B, copy_B)


def _token_ids(prompts) -> list[list[int]]:
    """The prompts as lists of Python ints; one-line errors for a flat list, text or non-integer ids."""
    if isinstance(prompts, str | bytes) or any(
        isinstance(p, str | bytes) or np.ndim(p) != 1 for p in prompts
    ):
        raise ValueError("prompts must be a list of token-id lists; wrap one prompt as [ids]")
    if not len(prompts):
        raise ValueError("no prompts given")
    return [[_token_id(t) for t in p] for p in prompts]


def _token_id(t) -> int:
    try:
        return operator.index(t)  # ints of any kind; floats are refused, never truncated
    except TypeError:
        raise ValueError(f"prompt token ids must be integers; got {t!r}") from None


def _named_ids(options: GenerateOptions, name: str) -> list[int]:
    """The token ids an option names (the words of bad_words_ids and sequence_bias flattened)."""
    value = getattr(options, name) or ()
    if name == "sequence_bias":
        value = [word for word, _ in value]
    return [t for word in value for t in word] if name in ("bad_words_ids", "sequence_bias") else list(value)


def _checked(config: GPTConfig, prompts, options: GenerateOptions) -> tuple[list[list[int]], int]:
    """(the prompts as lists of ints, new tokens per sequence); one-line errors for bad ids or lengths."""
    prompts = _token_ids(prompts)
    for p in prompts:
        if not p:
            raise ValueError("a prompt is empty: give at least one token (e.g. the tokenizer's BOS token)")
        if not all(0 <= t < config.vocab_size for t in p):
            raise ValueError(f"prompt token ids must be in [0, {config.vocab_size}); got {p[:20]}")
    for name in (
        "eos_token_id",
        "suppress_tokens",
        "begin_suppress_tokens",
        "bad_words_ids",
        "sequence_bias",
    ):
        ids = _named_ids(options, name)
        if any(t >= config.vocab_size for t in ids):
            raise ValueError(
                f"{name}={ids[:20]} has ids past the model's vocab_size={config.vocab_size}; "
                f"pass ids in [0, {config.vocab_size})"
            )
    given = max(map(len, prompts))  # max_length and min_length count the prompt as given (HF)
    n_new = options.max_new_tokens
    if n_new is None:
        n_new = options.max_length - given if options.max_length is not None else DEFAULT_MAX_NEW_TOKENS
        if n_new <= 0:
            raise ValueError(f"max_length={options.max_length} leaves no room after the {given}-token prompt")
    return prompts, n_new


def _prepare(
    params, config: GPTConfig, prompts, options: GenerateOptions, custom: Sequence = ()
) -> tuple[decode.DecodeState, int, int, tuple]:
    """(state after prefill, longest prompt P, last column to write, the sampling rules); prompts checked,
    cropped and padded."""
    prompts, n_new = _checked(config, prompts, options)
    given = max(map(len, prompts))  # max_length and min_length count the prompt as given (HF)
    if max(map(len, prompts)) > config.block_size:
        warnings.warn(
            f"prompt of {max(map(len, prompts))} tokens cropped on the left to the context, "
            f"block_size={config.block_size}",
            stacklevel=3,
        )
        prompts = [p[-config.block_size :] for p in prompts]
    P = max(map(len, prompts))

    copies = options.num_beams if options.mode in BEAM_MODES else options.num_return_sequences
    B = len(prompts) * copies
    L = decode.bucket(P + n_new)
    S = config.block_size if P + n_new > config.block_size else min(config.block_size, L)
    tokens_BL = np.zeros((B, L), np.int32)
    valid_BL = np.ones((B, L), bool)
    for row in range(B):
        p = prompts[row // copies]
        tokens_BL[row, P - len(p) : P] = p
        valid_BL[row, : P - len(p)] = False
    # Row keys: fold_in(seed, crc32 of the prompt, sample index). A row's text then depends only on its
    # prompt, the seed and the options, never on the rest of the batch, and different prompts draw
    # independent random numbers.
    prompt_hash_B = np.repeat([zlib.crc32(np.asarray(p, np.int32).tobytes()) for p in prompts], copies)
    keys_B = _row_keys(
        jax.random.key(options.seed, impl="philox4x32"),
        prompt_hash_B.astype(np.uint32),
        np.arange(B, dtype=np.uint32) % copies,
    )
    final = P + n_new - 1
    num_beams = options.num_beams if options.mode in BEAM_MODES else None
    state = decode.initial_state(params, config, tokens_BL, valid_BL, P, final, keys_B, S, num_beams)
    return state, P, final, options.rules(prompt_len=given, custom=custom)


def generate_ids(
    params: Any,
    config: GPTConfig,
    prompts: Sequence[Sequence[int]],
    options: GenerateOptions | None = None,
    *,
    on_chunk: Callable[[np.ndarray], bool] | None = None,
    chunk: int | None = None,
    logits_processor: Sequence = (),
    assistant: Any = None,
    num_assistant_tokens: int = 5,
) -> list[list[np.ndarray]]:
    """New token ids: for each prompt, num_return_sequences int32 arrays (ending with the EOS if one came).

    on_chunk(new_tokens_BN), when given, is called every `chunk` new tokens (not in beam search) with
    the tokens of every row so far; it returns True to stop early. logits_processor: rules of the
    user's own (gptjax.sampling.custom_rule says what they may be). assistant: a draft model for assisted
    generation (gptjax.assisted), a (params, GPTConfig) pair or a workdir, proposing num_assistant_tokens
    tokens at a time; rows are then decoded one by one (on_chunk sees one row at a time).
    """
    extra = {} if assistant is None else dict(assistant=assistant, num_assistant_tokens=num_assistant_tokens)
    generated = _generate(
        params, config, prompts, options, on_chunk, chunk, logits_processor=logits_processor, **extra
    )
    return [[ids for ids, *_ in seqs] for seqs in generated]


def _generate(
    params,
    config,
    prompts,
    options,
    on_chunk,
    chunk,
    *,
    logits_processor: Sequence = (),
    assistant: Any = None,
    num_assistant_tokens: int = 5,
) -> list[list[tuple]]:
    """generate_ids, with the model's log-probability of each new token beside its id (and, with an
    assistant, a third item: its stats, gptjax.assisted.generate)."""
    options = options or GenerateOptions()
    if assistant is not None or options.prompt_lookup_num_tokens:
        from gptjax import assisted  # it builds on this module

        draft_params, draft_config = assisted.load_assistant(assistant) if assistant else (None, None)
        return assisted.generate(
            params,
            config,
            draft_params,
            draft_config,
            prompts,
            options,
            on_chunk,
            chunk,
            custom=logits_processor,
            num_assistant_tokens=num_assistant_tokens,
        )
    params, config = decode.for_decoding(params, config)
    state, P, final, rules = _prepare(params, config, prompts, options, logits_processor)
    mode, S = options.mode, state.kv_mask_BS.shape[1]
    step_params, step_config = params, config  # what the decode loop reads; prefill keeps [in, out]
    if decode.use_matvec_layout(params, rows=state.tokens_BL.shape[0]):
        step_params, step_config = decode.for_matvec(params, config)
    eos_E = jnp.asarray(options.eos_token_id or (), jnp.int32)
    length_penalty = jnp.float32(options.length_penalty)
    if mode in BEAM_MODES:
        on_chunk = None
    chunk = chunk or STOP_CHECK_CHUNK
    cur = P - 1
    while True:
        stop_at = final if on_chunk is None else min(cur + chunk, final)
        state, finished = decode.run(
            step_params,
            state,
            rules,
            eos_E,
            length_penalty,
            jnp.int32(stop_at),
            config=step_config,
            mode=mode,
            early_stopping=options.early_stopping,
        )
        cur, offset = int(state.cur), int(state.offset)
        if on_chunk is not None and on_chunk(np.asarray(state.tokens_BL)[:, P : cur + 1]):
            break
        if bool(finished) or cur >= final:
            break
        if cur - offset == S:
            state = decode.slide(params, config, state)

    eos, n_prompts = set(options.eos_token_id or ()), len(prompts)
    R = options.num_return_sequences
    if mode in BEAM_MODES:
        fin_tokens, fin_logp = np.asarray(state.beam.fin_tokens_BKL), np.asarray(state.beam.fin_logp_BKL)
        fin_len = np.asarray(state.beam.fin_len_BK)
        cut = lambda x, i, r: x[i, r, P : P + fin_len[i, r]]  # noqa: E731
        return [[(cut(fin_tokens, i, r), cut(fin_logp, i, r)) for r in range(R)] for i in range(n_prompts)]
    new_BN = np.asarray(state.tokens_BL)[:, P : cur + 1]
    logp_BN = np.asarray(state.logp_BL)[:, P : cur + 1]
    out = []
    for row, logp in zip(new_BN, logp_BN, strict=True):
        ends = [i for i, t in enumerate(row) if t in eos]
        n = ends[0] + 1 if ends else len(row)
        out.append((row[:n], logp[:n]))
    return [out[i * R : (i + 1) * R] for i in range(n_prompts)]


# ----- Text in, text out ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Completion:
    prompt: str
    text: str  # the new text only (without the prompt, an EOS token or a stop string)
    token_ids: np.ndarray  # the new tokens behind `text` (an EOS token or the stop string's included)
    # float32, one per token id: the model's log-probability of the token (its softmax before any option:
    # no temperature, top-k or penalty), given the text before it as decoding saw it
    logprobs: np.ndarray
    options: GenerateOptions  # as used: saved defaults and the tokenizer's EOS filled in
    # with an assistant: the share of the draft's proposals the model kept (gptjax.assisted)
    acceptance_rate: float | None = None


def load(model: Any) -> tuple[Any, GPTConfig, Any, dict]:
    """load_any's (params, config, tokenizer, saved defaults); a reward model (score_head) is refused."""
    params, config, tokenizer, saved = load_any(model)
    if config.score_head:
        name = model if isinstance(model, str | os.PathLike) else "the model"
        raise ValueError(
            f"{name} is a reward model (model.score_head): it scores texts, it does not generate; pass it "
            "as --reward_model to scripts/sample.py (gptjax.scoring)"
        )
    return params, config, tokenizer, saved


def load_any(model: Any) -> tuple[Any, GPTConfig, Any, dict]:
    """(params, config, tokenizer, saved sample defaults) of a workdir, an HF model directory (config.json
    and weights, read as scripts/convert.py --from_hf reads it; the defaults HF generate() takes from its
    generation_config.json) or a (params, config, tokenizer)."""
    if isinstance(model, str | os.PathLike):
        path = pathlib.Path(model).expanduser()
        if not (path / "checkpoints").is_dir() and (path / "config.json").is_file():
            from gptjax import convert  # an HF model: torch-free, numpy reads its safetensors

            return (*convert.load_hf_model(path), convert.hf_sample_defaults(path))
        from gptjax.train import load_params  # sampling needs a checkpoint; training never imports this

        params, config, tokenizer, saved = load_params(model)
        return params, config, tokenizer, saved.to_dict().get("sample", {})
    if isinstance(model, tuple) and len(model) in (3, 4):
        params, config, tokenizer = model[:3]
        saved = model[3] if len(model) == 4 else {}
        saved = saved.to_dict() if hasattr(saved, "to_dict") else dict(saved)
        return params, config, tokenizer, dict(saved.get("sample", saved))
    raise ValueError(
        "model must be a workdir or a (params, GPTConfig, tokenizer) tuple (as load_params gives)"
    )


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the first stop string in text, or None."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


def text_so_far(tokenizer: Any, new_ids: np.ndarray, eos: set, stop: Sequence[str]) -> tuple[str, str, bool]:
    """Of a row being generated: (its text as `complete` cuts it, before its first EOS token and its first
    stop string; the start of that text that can no longer change; whether the row has ended). While it
    runs, its last len(longest stop) - 1 characters may be the start of a stop string, and a last
    character may be the first bytes of one split across tokens: those wait."""
    ends = [i for i, t in enumerate(new_ids) if t in eos]
    whole = tokenizer.decode(new_ids[: ends[0]] if ends else new_ids)
    cut = _find_stop(whole, stop)
    text = whole[:cut]  # cut None: all of it
    if ends or cut is not None:
        return text, text, True
    hold = max(map(len, stop), default=1) - 1
    return text, text[: max(len(text) - hold, 0)].rstrip("\ufffd"), False


def merged_options(saved: dict, tokenizer: Any, **options: Any) -> GenerateOptions:
    """The options a call uses: those given (None: unset), then the saved ones, then the tokenizer's EOS."""
    fields = {f.name for f in dataclasses.fields(GenerateOptions)}
    unknown = set(options) - fields
    if unknown:
        raise ValueError(f"unknown generation options {sorted(unknown)}; known: {sorted(fields)}")
    defaults = {k: v for k, v in saved.items() if k in fields and v is not None}
    if options.get("max_length") is not None:
        defaults.pop("max_new_tokens", None)  # an explicit max_length beats a saved max_new_tokens
    options = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    options.setdefault("eos_token_id", tokenizer.eos_id)
    return GenerateOptions(**options)


def complete(
    model: Any,
    prompts: str | Sequence[str],
    *,
    stream: bool | Callable[[str], None] = False,
    logits_processor: Sequence = (),
    assistant: Any = None,
    num_assistant_tokens: int = 5,
    **options: Any,
) -> list[Completion]:
    """num_return_sequences Completions per prompt, prompt by prompt. See `generate` for the arguments."""
    params, config, tokenizer, saved = load(model)
    if assistant is not None:
        from gptjax import assisted  # it builds on this module

        assistant = assisted.load_assistant(assistant, tokenizer)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    opts = merged_options(saved, tokenizer, **options)

    ids = [prompt_ids(tokenizer, p) for p in prompts]
    eos = set(opts.eos_token_id or ())

    def until_eos(new: np.ndarray) -> tuple[np.ndarray, bool]:
        """(the tokens before the first EOS, whether there was one)."""
        ends = [i for i, t in enumerate(new) if t in eos]
        return (new[: ends[0]], True) if ends else (new, False)

    def finish(new: np.ndarray, logprobs: np.ndarray) -> Completion:
        tokens, _ = until_eos(new)
        text = tokenizer.decode(tokens)
        cut = _find_stop(text, opts.stop)
        if cut is None:
            return Completion("", text, new, logprobs, opts)
        # The fewest tokens whose text contains the stop string.
        n = next(
            i
            for i in range(len(tokens) + 1)
            if _find_stop(tokenizer.decode(tokens[:i]), opts.stop) is not None
        )
        return Completion("", text[:cut], new[:n], logprobs[:n], opts)

    on_chunk, chunk = None, None
    if stream or opts.stop:
        if stream and (len(prompts) > 1 or opts.num_return_sequences > 1 or opts.mode in BEAM_MODES):
            raise ValueError("stream needs one prompt, one sequence and no beam search")
        to = stream if callable(stream) else lambda s: print(s, end="", flush=True)
        write = lambda s: s and to(s)  # noqa: E731  (no empty pieces: each is new text)
        shown = [0]  # characters of the first row printed so far

        def on_chunk(new_BN: np.ndarray) -> bool:
            rows = [text_so_far(tokenizer, row, eos, opts.stop) for row in new_BN]
            if stream:
                final = rows[0][1]
                write(final[shown[0] :])
                shown[0] = max(shown[0], len(final))
            return all(ended for _, _, ended in rows)

        chunk = 1 if stream else STOP_CHECK_CHUNK

    extra = {} if assistant is None else dict(assistant=assistant, num_assistant_tokens=num_assistant_tokens)
    generated = _generate(
        params, config, ids, opts, on_chunk, chunk, logits_processor=logits_processor, **extra
    )
    out = [
        dataclasses.replace(finish(new, logprobs), prompt=prompt, acceptance_rate=_acceptance(stats))
        for prompt, seqs in zip(prompts, generated, strict=True)
        for new, logprobs, *stats in seqs
    ]
    if stream:
        write(out[0].text[shown[0] :])  # the pieces joined are the completion's text
        if not callable(stream):
            print(flush=True)  # and the terminal's line ends after it
    return out


def _acceptance(stats: list) -> float | None:
    """The acceptance rate in an assisted row's stats (none without an assistant)."""
    return stats[0]["accepted"] / max(stats[0]["proposed"], 1) if stats else None


def generate(
    model: Any,
    prompts: str | Sequence[str],
    *,
    stream: bool | Callable[[str], None] = False,
    logits_processor: Sequence = (),
    assistant: Any = None,
    num_assistant_tokens: int = 5,
    **options: Any,
) -> list[str]:
    """Prompt + generated text for each prompt (num_return_sequences each, prompt by prompt).

    model: a training workdir (its latest checkpoint; options left unset take its config.sample values)
    or a (params, GPTConfig, tokenizer) tuple. options: the fields of GenerateOptions. stream=True prints
    the text as it comes (one prompt, one sequence), or calls the given function with each new piece
    (the pieces joined are the new text).
    logits_processor: rules of your own, each a function (logits_BV, history) -> logits_BV or a
    flax.struct dataclass with that __call__ (HF's argument of that name; gptjax.sampling.custom_rule).
    assistant: a draft model sharing the model's tokenizer (a workdir or a (params, GPTConfig, tokenizer)
    tuple) for assisted generation (HF's assistant_model; gptjax.assisted): it proposes
    num_assistant_tokens tokens at a time, the model checks them in one pass; the text has the model's
    distribution (greedy: its very text), prompts and sequences are decoded one by one.
    """
    completions = complete(
        model,
        prompts,
        stream=stream,
        logits_processor=logits_processor,
        assistant=assistant,
        num_assistant_tokens=num_assistant_tokens,
        **options,
    )
    return [c.prompt + c.text for c in completions]
