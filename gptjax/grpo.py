"""GRPO (Shao et al. 2024, DeepSeekMath's Group Relative Policy Optimization; TRL's GRPOTrainer): a trained
model learns from the rewards of its own samples. configs/grpo.py runs it.

Each step draws batch_size / G prompts (G = grpo.num_generations; gptjax.data.prompts), samples G
completions of each with the current policy (gptjax.sample.generate_ids: the jitted KV-cache decoder at
grpo.temperature, top_k, top_p), scores every completion with the reward functions and the reward model
(their weighted sum; gptjax.scoring for a reward model), and turns the rewards into advantages relative to
the prompt's group (group_advantages):
    A_i = (r_i - mean of the group's r) / (std of the group's r + 1e-4)      (scale_rewards="group")
("batch": the std of the whole batch; "none": not divided, as Dr. GRPO). Every token t of completion i is
then trained with PPO's clipped surrogate and, with beta > 0, a KL penalty towards the reference (grpo_loss):
    loss_it = -min(rho_it A_i, clip(rho_it, 1 - epsilon, 1 + epsilon_high) A_i) + beta KL_it
    rho_it = pi(o_it) / pi_old(o_it),   KL_it = exp(ref_it - logp_it) - (ref_it - logp_it) - 1   (k3)
over log-probabilities of the logits divided by the temperature, as TRL computes them. pi_old is the policy
that sampled: with num_iterations = 1 (one update per generation, TRL's default) rho is 1 and carries the
policy's gradient; with num_iterations = mu > 1 the same completions train mu consecutive steps and rho
moves (its log-probabilities taken when they were sampled). importance_sampling_level="sequence" (GSPO)
gives every token its completion's mean log-ratio. loss_type says how token losses average:
    "grpo": over each completion's tokens, then over completions (the paper's);
    "dapo": over every completion token of the global batch (DAPO; TRL's default);
    "dr_grpo": their sum over the batch / (completions x max_new_tokens) (Dr. GRPO).
The reference is the starting model: a LoRA run's base (adapters dropped, nothing stored), else a copy of
the init_from weights.

A batch is five [B, T] arrays (x, y, advantage, old and reference log-probabilities; train_step's loss_fn
reads them), so it splits over devices and micro-batches as a token batch does. Every process generates
and scores the whole global batch (the same on each) and trains its rows. Resuming is exact: prompts and
sampling keys come from (seed, step) alone.
"""

import dataclasses
import functools
import importlib
import importlib.util
import pathlib
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.data import chat
from gptjax.data.prompts import Prompt, PromptDataset
from gptjax.data.sft import decode_rows, masked, pad
from gptjax.lm_head import token_logps
from gptjax.model import GPT, GPTConfig, drop_lora, merge_lora

LOSSES = ("grpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")
LEVELS = ("token", "sequence")
METRICS = ("clip_ratio",)  # the step's, beside the loss ("kl" too with beta > 0)
STD_EPS = 1e-4  # TRL's: the advantage of a group whose rewards are equal is 0, not 0/0
_SPLITS = {"train": 0, "val": 1}


# ----- The loss (on the device) --------------------------------------------------------------------------


def grpo_loss(
    logp_BT: jax.Array,
    old_BT: jax.Array,
    ref_BT: jax.Array,
    adv_B: jax.Array,
    mask_BT: jax.Array,
    objective: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, {"clip_ratio", "kl" with beta > 0}) of completions' token log-probabilities logp_BT (the
    policy's), old_BT (the sampler's; ignored on policy: objective.on_policy) and ref_BT (the reference's;
    read with objective.beta > 0), advantages adv_B, over the completion tokens mask_BT (module doc)."""
    mask = mask_BT.astype(jnp.float32)
    n_B = jnp.sum(mask, axis=-1)
    old_BT = jax.lax.stop_gradient(logp_BT) if objective.on_policy else old_BT
    log_ratio_BT = (logp_BT - old_BT) * mask
    if objective.importance_level == "sequence":  # GSPO: each completion's mean log-ratio
        log_ratio_BT = jnp.broadcast_to(
            (jnp.sum(log_ratio_BT, axis=-1) / jnp.maximum(n_B, 1.0))[:, None], logp_BT.shape
        )
    ratio_BT = jnp.exp(log_ratio_BT)
    low, high = 1 - objective.epsilon, 1 + objective.epsilon_high
    adv_BT = adv_B[:, None]
    loss_BT = -jnp.minimum(ratio_BT * adv_BT, jnp.clip(ratio_BT, low, high) * adv_BT)
    tokens = jnp.maximum(jnp.sum(mask), 1.0)
    metrics = {}
    if objective.beta > 0:
        delta_BT = ref_BT - logp_BT
        kl_BT = jnp.exp(delta_BT) - delta_BT - 1
        loss_BT = loss_BT + objective.beta * kl_BT
        metrics["kl"] = jnp.sum(kl_BT * mask) / tokens
    clipped_BT = ((ratio_BT < low) & (adv_BT < 0)) | ((ratio_BT > high) & (adv_BT > 0))
    metrics["clip_ratio"] = jnp.sum(clipped_BT * mask) / tokens
    if objective.grpo_loss == "grpo":
        loss = jnp.mean(jnp.sum(loss_BT * mask, axis=-1) / jnp.maximum(n_B, 1.0))
    elif objective.grpo_loss == "dapo":
        loss = jnp.sum(loss_BT * mask) / tokens
    else:  # dr_grpo
        loss = jnp.sum(loss_BT * mask) / (logp_BT.shape[0] * objective.max_completion)
    return loss, metrics


def group_advantages(rewards_N: np.ndarray, num_generations: int, scale: str) -> np.ndarray:
    """float32 [N]: each reward minus its group's mean (G = num_generations consecutive rewards), divided
    by the group's standard deviation (scale "group"), the batch's ("batch"), or not ("none"); stds are
    unbiased (torch.std's, as TRL's) plus STD_EPS."""
    r_PG = np.asarray(rewards_N, np.float64).reshape(-1, num_generations)
    adv_PG = r_PG - r_PG.mean(axis=1, keepdims=True)
    if scale == "group":
        adv_PG = adv_PG / (r_PG.std(axis=1, ddof=1, keepdims=True) + STD_EPS)
    elif scale == "batch":
        adv_PG = adv_PG / (r_PG.std(ddof=1) + STD_EPS)
    return adv_PG.reshape(-1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("config", "temperature"))
def _token_logps(params: Any, x_BT: jax.Array, y_BT: jax.Array, config: GPTConfig, temperature: float):
    """[B, T] float32: each target's log-probability under logits / temperature (0 where y < 0)."""
    logits_BTV, _ = GPT(config).apply({"params": params}, x_BT)
    return token_logps(logits_BTV / temperature, y_BT)


def check_config(config: Any, starts_trained: bool) -> None:
    """One-line ValueErrors for a GRPO run that cannot work, before it samples anything."""
    g = config.grpo
    if not starts_trained:
        raise ValueError(
            "GRPO improves a trained model with its own samples: set --config.init_from=<workdir, HF "
            "directory or Hub id> (e.g. a configs/sft.py run)"
        )
    if config.data.get("format") != "prompt":
        raise ValueError(
            f'data.format={config.data.get("format", "text")!r}: GRPO reads prompts ({{"prompt": ...}} per '
            "line) and samples their completions; set --config.data.format=prompt (configs/grpo.py does)"
        )
    if config.model.get("score_head"):
        raise ValueError(
            "GRPO trains a language model; model.score_head=True is a reward model's: set it False"
        )
    if config.steps_per_call != 1:
        raise ValueError(
            f"steps_per_call={config.steps_per_call}: GRPO samples with the policy of every step; set it to 1"
        )
    if g.num_generations < 2 or config.batch_size % g.num_generations:
        raise ValueError(
            f"grpo.num_generations={g.num_generations} must be >= 2 (a group's rewards are compared) and "
            f"divide batch_size={config.batch_size} (completions per step)"
        )
    if not 0 < g.max_new_tokens < config.model.block_size:
        raise ValueError(
            f"grpo.max_new_tokens={g.max_new_tokens} must be in [1, block_size={config.model.block_size}): "
            "the prompt needs room too"
        )
    if g.num_iterations < 1 or config.checkpoint_interval % g.num_iterations:
        raise ValueError(
            f"grpo.num_iterations={g.num_iterations} must be >= 1 and divide checkpoint_interval="
            f"{config.checkpoint_interval} (a resumed run starts at a fresh generation)"
        )
    if g.scale_rewards not in SCALES:
        raise ValueError(f"grpo.scale_rewards={g.scale_rewards!r} is unknown; use one of {SCALES}")


# ----- Rewards (on the host) -----------------------------------------------------------------------------


def load_reward_function(spec: str) -> tuple[str, Callable]:
    """(name, function) of "package.module:function" or "path/to/file.py:function"; one line when it
    cannot be found."""
    where, _, name = spec.strip().rpartition(":")
    if not where or not name:
        raise ValueError(
            f"grpo.reward_funcs entry {spec!r} names no function; write module:function or file.py:function"
        )
    try:
        if where.endswith(".py"):
            path = pathlib.Path(where)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"gptjax_rewards_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except (ImportError, FileNotFoundError) as e:
        raise ValueError(f"grpo.reward_funcs entry {spec!r}: cannot load {where} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"grpo.reward_funcs entry {spec!r}: {where} has no function {name!r}")
    return name, fn


@dataclasses.dataclass
class Rewards:
    """The reward functions and reward model of config.grpo, and their weights."""

    functions: list[tuple[str, Callable]]
    reward_model: Any  # a gptjax.scoring.RewardModel or None
    weights: np.ndarray  # one per function, then the reward model's

    @classmethod
    def from_config(cls, grpo: Any) -> "Rewards":
        specs = [s for s in str(grpo.get("reward_funcs") or "").split(",") if s.strip()]
        functions = [load_reward_function(s) for s in specs]
        reward_model = None
        if grpo.get("reward_model"):
            from gptjax import scoring  # it imports sampling code; GRPO without a reward model does not

            reward_model = scoring.RewardModel.load(grpo.reward_model)
        n = len(functions) + (reward_model is not None)
        if n == 0:
            raise ValueError(
                "GRPO learns from rewards: set --config.grpo.reward_funcs=module:function[,...] and/or "
                "--config.grpo.reward_model=<a configs/reward.py workdir or HF reward model>"
            )
        weights = [float(w) for w in str(grpo.get("reward_weights") or "").split(",") if w.strip()]
        if weights and len(weights) != n:
            raise ValueError(
                f"grpo.reward_weights has {len(weights)} weights for {n} rewards (the functions, then the "
                "reward model); give one each or none (all 1)"
            )
        return cls(functions, reward_model, np.asarray(weights or [1.0] * n, np.float64))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.functions] + (["reward_model"] if self.reward_model else [])

    def __call__(
        self, prompts: list[Prompt], completions: list, ids: list[np.ndarray]
    ) -> tuple[np.ndarray, dict]:
        """(the weighted sum of each completion's rewards [N] (NaNs, a function's None, left out as TRL's
        nansum), {name: that reward's mean over the completions it rated})."""
        texts = [p.prompt for p in prompts]
        keys = sorted({k for p in prompts for k in p.columns})
        columns = {k: [p.columns.get(k) for p in prompts] for k in keys}
        per_N = []
        for name, fn in self.functions:
            got = fn(prompts=texts, completions=completions, completion_ids=ids, **columns)
            if got is None or len(got) != len(completions):
                raise ValueError(
                    f"reward function {name} returned {'None' if got is None else len(got)} values for "
                    f"{len(completions)} completions; return one float (or None) per completion"
                )
            per_N.append([np.nan if v is None else float(v) for v in got])
        if self.reward_model is not None:
            per_N.append(self.reward_model.score(texts, completions))
        per_FN = np.asarray(per_N, np.float64)
        total_N = np.nansum(per_FN * self.weights[:, None], axis=0)
        means = {
            n: float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
            for n, r in zip(self.names, per_FN, strict=True)
        }
        return total_N, means


# ----- Rollouts: prompts -> completions -> rewards -> a batch --------------------------------------------


def completion(
    tokenizer: Any, ids: np.ndarray, eos: int | None, stop: Sequence[str]
) -> tuple[list[int], str, bool]:
    """(the ids trained, the text rewarded, whether it ended) of one generated row (ending with its EOS if
    one came): the text stops before a stop string (a conversation's end of turn), and the ids at the token
    that completes it."""
    ids = [int(t) for t in ids]
    ended = bool(ids) and ids[-1] == eos
    body = ids[:-1] if ended else ids
    text = tokenizer.decode(body)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    if not cuts:
        return ids, text, ended
    n = next(n for n in range(1, len(body) + 1) if any(s in tokenizer.decode(body[:n]) for s in stop))
    return body[:n], text[: min(cuts)], True


def _one_device(params: Any) -> Any:
    """Params sharded over a mesh, gathered whole to the host (decoding runs on one device); others as
    they are."""
    leaves = jax.tree_util.tree_leaves(params)
    if all(not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1 for x in leaves):
        return params
    return jax.device_get(params)


def _seed(seed: int, split: str, step: int) -> int:
    return zlib.crc32(f"{seed}:{split}:{step}".encode()) & 0x7FFFFFFF


class Rollouts:
    """Builds GRPO's batches from the policy's samples (module doc); `batch` for training, `evaluate` for
    the val prompts' mean rewards."""

    def __init__(self, config: Any, dataset: PromptDataset, cfg: GPTConfig, reference: Any = None):
        g = config.grpo
        self.config, self.dataset, self.cfg, self.tokenizer = config, dataset, cfg, dataset.tokenizer
        self.G, self.mu = g.num_generations, g.num_iterations
        self.reference = None if reference is None else jax.device_put(reference)  # placed once
        self.rewards = Rewards.from_config(g)
        self.stop = (
            chat.stops(self.tokenizer) if any(isinstance(p.prompt, list) for p in dataset.train) else []
        )
        self._cached: tuple[int, tuple, dict] | None = None  # (generation step, batch, metrics)

    def draw(self, split: str, index: int, n: int) -> list[Prompt]:
        """Prompts index * n ... of `split` in an order reshuffled every pass (from the seed alone)."""
        prompts = getattr(self.dataset, split)
        out = []
        for g in range(index * n, (index + 1) * n):
            epoch, i = divmod(g, len(prompts))
            out.append(prompts[self._order(split, epoch)[i]])
        return out

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one Rollouts per run: the cache dies with it)
    def _order(self, split: str, epoch: int) -> np.ndarray:
        """The order of `split`'s prompts in pass `epoch`, from the seed alone."""
        n = len(getattr(self.dataset, split))
        return np.random.default_rng([self.config.seed, _SPLITS[split], epoch]).permutation(n)

    def sample(
        self, params: Any, prompts: list[Prompt], seed: int
    ) -> tuple[list[Prompt], list, list, np.ndarray]:
        """(each completion's prompt, its text (a reply message for a conversation), its ids, whether it
        ended) for G samples of each prompt, by the policy `params`."""
        from gptjax.sample import GenerateOptions, generate_ids  # decoding imports the model stack

        g = self.config.grpo
        options = GenerateOptions(
            max_new_tokens=g.max_new_tokens,
            do_sample=True,
            temperature=g.temperature,
            top_k=g.top_k or None,
            top_p=g.top_p if g.top_p < 1 else None,
            num_return_sequences=self.G,
            eos_token_id=self.tokenizer.eos_id,
            seed=seed,
        )
        gen_params, gen_cfg = merge_lora(params, self.cfg)
        generated = generate_ids(gen_params, gen_cfg, [list(p.ids) for p in prompts], options)
        owners, texts, ids, ended = [], [], [], []
        for prompt, rows in zip(prompts, generated, strict=True):
            for row in rows:
                kept, text, done = completion(self.tokenizer, row, self.tokenizer.eos_id, self.stop)
                owners.append(prompt)
                texts.append(
                    [{"role": "assistant", "content": text}] if isinstance(prompt.prompt, list) else text
                )
                ids.append(np.asarray(kept, np.int32))
                ended.append(done)
        return owners, texts, ids, np.asarray(ended)

    def batch(self, params: Any, step: int, rows=slice(None)) -> tuple[tuple[np.ndarray, ...], dict]:
        """(this process's `rows` of step's batch (x, y, advantage, old, reference), each [1, B, T], its
        rollout metrics); num_iterations > 1 reuses the last generation's."""
        start = step - step % self.mu
        if self._cached is None or self._cached[0] != start:
            self._cached = (start, *self._generate(params, start))
        _, arrays, metrics = self._cached
        return tuple(a[None, rows] for a in arrays), metrics

    def _generate(self, params: Any, step: int) -> tuple[tuple[np.ndarray, ...], dict]:
        g, B = self.config.grpo, self.config.batch_size
        params = _one_device(params)
        prompts = self.draw("train", step // self.mu, B // self.G)
        owners, texts, ids, ended = self.sample(params, prompts, _seed(self.config.seed, "train", step))
        rewards_N, means = self.rewards(owners, texts, ids)
        adv_N = group_advantages(rewards_N, self.G, g.scale_rewards)
        values = [np.concatenate([masked(p.ids), c]) for p, c in zip(owners, ids, strict=True)]
        x_BT, y_BT = decode_rows(pad(values, self.config.model.block_size + 1))
        if g.mask_truncated_completions:
            y_BT = np.where(ended[:, None], y_BT, -1)
        zeros = np.zeros(x_BT.shape, np.float32)
        old_BT = zeros
        if self.mu > 1:  # the sampler's log-probabilities, for rho
            old_BT = np.asarray(_token_logps(params, x_BT, y_BT, config=self.cfg, temperature=g.temperature))
        ref_BT = zeros
        if g.beta > 0:
            if self.cfg.lora_rank:
                ref, ref_cfg = drop_lora(params), dataclasses.replace(self.cfg, lora_rank=0)
            else:
                ref, ref_cfg = self.reference, self.cfg
            ref_BT = np.asarray(_token_logps(ref, x_BT, y_BT, config=ref_cfg, temperature=g.temperature))
        adv_BT = np.broadcast_to(adv_N[:, None], x_BT.shape).astype(np.float32)
        std_P = rewards_N.reshape(-1, self.G).std(axis=1, ddof=1)
        metrics = {
            "reward": float(rewards_N.mean()),
            "reward_std": float(std_P.mean()),
            "frac_reward_zero_std": float(np.mean(std_P < 1e-12)),
            "completion_length": float(np.mean([len(c) for c in ids])),
            "truncated_share": float(1 - ended.mean()),
            **({f"reward_{k}": v for k, v in means.items()} if len(means) > 1 else {}),
        }
        return (x_BT, y_BT, adv_BT, old_BT, ref_BT), metrics

    def evaluate(self, params: Any, step: int) -> dict[str, float]:
        """{"reward", each reward's "reward_<name>" when there are several, "completion_length"}: means over
        G samples of each prompt of eval_iters batches of val prompts, fresh at every evaluation."""
        totals, per_name, lengths = [], {}, []
        params = _one_device(params)
        n = self.config.batch_size // self.G
        for i in range(self.config.eval_iters):
            index = step * self.config.eval_iters + i
            prompts = self.draw("val", index, n)
            owners, texts, ids, _ = self.sample(params, prompts, _seed(self.config.seed, "val", index))
            rewards_N, means = self.rewards(owners, texts, ids)
            totals.append(rewards_N.mean())
            lengths.append(np.mean([len(c) for c in ids]))
            for k, v in means.items():
                per_name.setdefault(k, []).append(v)
        out = {"reward": float(np.mean(totals)), "completion_length": float(np.mean(lengths))}
        if len(per_name) > 1:
            out.update({f"reward_{k}": float(np.mean(v)) for k, v in per_name.items()})
        return out
