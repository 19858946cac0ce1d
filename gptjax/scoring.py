"""Scoring texts with a reward model (gptjax.reward, configs/reward.py), and best-of-n sampling.

`RewardModel.load(workdir)` reads a reward model (model.score_head); `score(prompts, completions)` gives
each prompt and completion one float32 reward, the one training computes for the same text:
  * each pair is encoded as preference data encodes a prompt and an answer (gptjax.data.preference: the
    reward model's own BOS where its tokenizer adds one, the prompt's tokens, the completion's and the EOS
    training appends after an answer; lists of messages written in ChatML or the tokenizer's chat
    template, as a conversational pair's), and a text too long for block_size + 1 tokens is cut as
    training cuts one (the start of the prompt first: gptjax.data.sft);
  * the reward is the score at the text's last token (gptjax.reward.row_rewards, at last_positions). A text
    with nothing after its prompt (an empty completion, a tokenizer without EOS) is read at its prompt's
    last token.
Texts, not token ids, go from a policy to the reward model, so the two may have different tokenizers.

Texts are batched longest with longest, `batch_size` rows at a time (the last batch filled up), each padded
to a power of two tokens (decode.bucket, at most block_size), so the jitted forward pass compiles once per
length bucket. Causal attention never lets a text see the padding after it, and rows are independent: a
text's reward does not depend on what it is batched with.

`best_of_n` keeps the best k of each prompt's n samples (HF's and OpenAI's best_of): scripts/sample.py
--reward_model=WORKDIR [--best_of=N] prints them best first with their rewards. `pair_accuracy` is how
well it ranks preference pairs: scripts/eval.py --workdir=RM --pairs=FILE.
"""

import dataclasses
import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from gptjax import decode, reward
from gptjax.data.preference import _answer, answer_row
from gptjax.data.sft import decode_rows, pad
from gptjax.model import GPT, GPTConfig

BATCH_ROWS = 16  # rows per forward pass (one compilation per length bucket; pass 1 for single long texts)


@functools.partial(jax.jit, static_argnames="config")
def _rewards(params: Any, x_BT: jax.Array, y_BT: jax.Array, config: GPTConfig) -> jax.Array:
    """[B] float32: each row's reward, its score at the x position of its last target (gptjax.reward)."""
    scores_BT, _ = GPT(config).apply({"params": params}, x_BT)
    return reward.row_rewards(scores_BT, y_BT)


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """A reward model's parameters, GPTConfig (score_head) and tokenizer, and how messages name it."""

    params: Any
    config: GPTConfig
    tokenizer: Any
    name: str = "the reward model"

    @classmethod
    def load(cls, model: Any) -> "RewardModel":
        """A reward model from a workdir, an HF directory or a (params, GPTConfig, tokenizer) tuple (as
        gptjax.sample.load_any reads them); a RewardModel as it is. One line when it is a language model."""
        if isinstance(model, RewardModel):
            return model
        from gptjax import sample  # its loader reads every kind of model; sampling never imports this

        params, config, tokenizer, _ = sample.load_any(model)
        name = str(model) if isinstance(model, str | os.PathLike) else "the model"
        if not config.score_head:
            raise ValueError(
                f"{name} is a language model, not a reward model (model.score_head); train one with "
                "configs/reward.py"
            )
        return cls(params, config, tokenizer, name)

    def rows(self, prompts: Sequence, completions: Sequence) -> list[np.ndarray]:
        """Each (prompt, completion)'s row values as preference data builds an answer's (gptjax.data.sft
        values: the prompt masked, the completion and its EOS trained), at most block_size + 1; warns once
        with how many were cut."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts and {len(completions)} completions; give one prompt per completion"
            )
        tokenizer, length = self.tokenizer, self.config.block_size + 1
        values, cut = [], 0
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            where = f"text {i} scored by {self.name}"
            pieces, ends_with_eos = _answer(where, prompt, completion, tokenizer)
            row, how = answer_row(where, pieces, ends_with_eos, tokenizer, length)
            if not len(row):
                raise ValueError(f"{where}: the prompt and the completion are both empty; give one some text")
            if len(row) > 1 and not (row[1:] >= 0).any():  # nothing after the prompt: read its last token
                row[-1] = -row[-1] - 1
            values.append(row)
            cut += how > 0
        if cut:
            warnings.warn(
                f"{cut} of {len(values)} texts are longer than {self.name}'s block_size + 1 = {length} "
                "tokens and were cut as training cuts them (the start of the prompt first); their rewards "
                "are of what is left",
                stacklevel=3,
            )
        return values

    def score(
        self, prompts: str | Sequence, completions: str | Sequence, batch_size: int = BATCH_ROWS
    ) -> np.ndarray:
        """float32 [N]: the reward of each prompt with its completion (strings, or lists of messages as
        conversational preference pairs hold them; see the module doc); one string prompt: that of every
        completion."""
        completions = [completions] if isinstance(completions, str) else list(completions)
        prompts = [prompts] * len(completions) if isinstance(prompts, str) else list(prompts)
        values = self.rows(prompts, completions)
        out = np.zeros(len(values), np.float32)
        order = np.argsort([len(v) for v in values], kind="stable")  # like lengths batched together
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            T = min(decode.bucket(max(len(values[i]) for i in picked)), self.config.block_size)
            rows_BR = pad(
                [values[i] for i in picked] + [values[picked[0]]] * (batch_size - len(picked)), T + 1
            )
            x_BT, y_BT = decode_rows(rows_BR)
            out[picked] = np.asarray(_rewards(self.params, x_BT, y_BT, config=self.config))[: len(picked)]
        return out


def samples_to_draw(num_samples: int, best_of: int | None, reward_model: Any) -> int:
    """How many samples per prompt to generate for num_samples printed: best_of (default num_samples)
    with a reward model; one-line errors for best_of without a reward model or below num_samples."""
    if best_of is None:
        return num_samples
    if reward_model is None:
        raise ValueError(
            f"--best_of={best_of} keeps the samples a reward model rates best; pass --reward_model=WORKDIR "
            "(a configs/reward.py run), or drop --best_of"
        )
    if best_of < num_samples:
        raise ValueError(
            f"--best_of={best_of} generates fewer samples than --num_samples={num_samples} keeps; pass "
            f"--best_of >= {num_samples}"
        )
    return best_of


def best_of_n(
    reward_model: Any, prompts: Sequence, completions: Sequence, n: int, k: int | None = None
) -> list[tuple[int, float]]:
    """The best k (default n) of each prompt's n samples as (index into completions, reward), prompt by
    prompt, best first (ties: the earlier sample). completions come in consecutive groups of n, as
    gptjax.sample.complete returns num_return_sequences=n of each prompt; prompts[i] is completion i's
    prompt as the reward model reads it (strings, or lists of messages: RewardModel.score).
    reward_model: a RewardModel or what RewardModel.load reads."""
    k = n if k is None else k
    if len(completions) % n or not 0 < k <= n:
        raise ValueError(
            f"best_of_n needs groups of n={n} completions (got {len(completions)}) and 0 < k <= n"
        )
    rewards = RewardModel.load(reward_model).score(prompts, completions)
    best = []
    for start in range(0, len(completions), n):
        order = np.argsort(-rewards[start : start + n], kind="stable")[:k]
        best += [(start + int(i), float(rewards[start + i])) for i in order]
    return best


def pair_accuracy(reward_model: Any, pairs: Sequence, batch_size: int = BATCH_ROWS) -> dict[str, float]:
    """How a reward model ranks preference pairs (where, prompt, chosen, rejected) as
    gptjax.data.preference.pair_records reads them (RewardBench's accuracy): the share of pairs whose
    chosen answer scores strictly higher, the mean margin r(chosen) - r(rejected), the mean reward."""
    rm = RewardModel.load(reward_model)
    prompts = [p for _, p, _, _ in pairs]
    chosen = rm.score(prompts, [c for _, _, c, _ in pairs], batch_size)
    rejected = rm.score(prompts, [r for _, _, _, r in pairs], batch_size)
    return {
        "pairs": len(pairs),
        "accuracy": float(np.mean(chosen > rejected)),
        "margin": float(np.mean(chosen - rejected)),
        "mean_reward": float(np.mean([chosen, rejected])),
    }
