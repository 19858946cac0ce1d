"""Reward models (GPTConfig.score_head) to and from Hugging Face's `*ForSequenceClassification` with one
label (num_labels=1), as TRL's RewardTrainer trains them: GPT2ForSequenceClassification and the Llama
family's (Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen3-MoE).

HF's sequence classifier is the causal LM's base model (GPT-2's `transformer.*`, a Llama's `model.*`
weights) with `score`, a bias-free nn.Linear(D, num_labels), in place of the LM head: `score.weight` is
[num_labels, D], applied at every position, and a row's logits are those of its last token that is not
pad_token_id. With one label that is gptjax's score head: `score` [D] is its one row, GPT returns every
position's score (scores_BT) and a text's reward is its last token's (gptjax.reward). A classifier of
several labels is refused. gptjax.convert (GPT-2) and gptjax.llama call in here: whether a config.json is
a reward model, the score weight both ways, and the config.json fields of an export.
"""

from typing import Any

import numpy as np

from gptjax.model import GPTConfig

# HF model_type -> its sequence classifier (transformers' modeling_*.py): what gptjax reads and writes.
SEQ_CLASSES = {
    "gpt2": "GPT2ForSequenceClassification",
    "llama": "LlamaForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "qwen3": "Qwen3ForSequenceClassification",
    "mixtral": "MixtralForSequenceClassification",
    "qwen3_moe": "Qwen3MoeForSequenceClassification",
}
SCORE = "score.weight"  # HF's head, [num_labels, D], no bias
# The label names PretrainedConfig gives one label (config.json's keys are strings).
ID2LABEL = {"0": "LABEL_0"}


def num_labels(hf: dict[str, Any]) -> int:
    """The num_labels transformers gives an HF config.json: its num_labels (which wins over id2label, with
    a warning), else len(id2label), else PretrainedConfig's default, 2."""
    if hf.get("num_labels") is not None:
        return int(hf["num_labels"])
    return len(hf["id2label"]) if hf.get("id2label") else 2


def is_reward_model(hf: dict[str, Any]) -> bool:
    """Whether an HF config.json is a reward model (SEQ_CLASSES' class of its model_type, one label); a
    causal LM (or a config.json naming no architectures) is not. One-line ValueError for a classifier of
    several labels or a classification head gptjax has not."""
    heads = [a for a in hf.get("architectures") or [] if a.endswith("Classification")]
    if not heads:
        return False
    model_type = hf.get("model_type", "gpt2")
    if heads[0] != SEQ_CLASSES.get(model_type):
        raise ValueError(
            f"architectures={heads} (model_type={model_type!r}) is not supported; gptjax reads the reward "
            f"models (num_labels=1) {', '.join(SEQ_CLASSES.values())} and causal LMs"
        )
    labels = num_labels(hf)
    if labels != 1:
        raise ValueError(
            f"num_labels={labels}: {heads[0]} is a classifier of {labels} labels; gptjax supports only "
            "reward models (num_labels=1)"
        )
    return True


def score_from_hf(weights: dict[str, np.ndarray], cfg: GPTConfig) -> dict[str, np.ndarray]:
    """{"score": [D] float32} of a reward model's HF weights (their score.weight [1, D], popped from
    `weights`); {} for a model without a score head (cfg.score_head False)."""
    if not cfg.score_head:
        return {}
    shape = (1, cfg.n_embd)
    if SCORE not in weights:
        raise ValueError(
            f"HF weights have no {SCORE!r} (shape {shape}): the model is not a reward model "
            "(*ForSequenceClassification); import it with score_head=False"
        )
    w_1D = np.asarray(weights.pop(SCORE), np.float32)
    if w_1D.shape != shape:
        raise ValueError(f"HF weight {SCORE} has shape {w_1D.shape}, expected {shape} for one label")
    return {"score": w_1D[0]}


def score_to_hf(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """{"score.weight": [1, D] float32} of a reward model's params (score_from_hf's inverse); {} for a
    model without a score head."""
    if not cfg.score_head:
        return {}
    score_D = np.asarray(params["score"], np.float32)
    if score_D.shape != (cfg.n_embd,):
        raise ValueError(f"param score has shape {score_D.shape}, expected ({cfg.n_embd},) for {cfg}")
    return {SCORE: np.ascontiguousarray(score_D[None])}


def reward_config(config: dict[str, Any], cfg: GPTConfig, tokenizer: Any = None) -> dict[str, Any]:
    """`config` (the config.json of the causal LM of cfg's shape) as that of its sequence classifier with
    one label when cfg.score_head (else `config` as it is): its architecture, num_labels, id2label,
    label2id and pad_token_id. One-line ValueError for a model_type HF has no sequence classifier of."""
    if not cfg.score_head:
        return config
    model_type = config["model_type"]
    if model_type not in SEQ_CLASSES:
        raise ValueError(
            f"score_head=True cannot be exported as {model_type!r}: HF has no sequence classifier of it; a "
            f"reward model exports as one of {', '.join(SEQ_CLASSES.values())}"
        )
    # HF's classifier reads each row at its last token that is not pad_token_id, and refuses a batch of
    # more than one row without one. gptjax's tokenizers have no pad token, and EOS cannot stand in (as
    # TRL's recipes set it): a text that ends with its EOS, as gptjax.reward scores it, would be read one
    # token early. So no pad id: HF scores one text at a time exactly as gptjax does; set pad_token_id to
    # an id no text ends with to score batches in HF.
    pad_id = getattr(tokenizer, "pad_id", None)
    return {
        **config,
        "architectures": [SEQ_CLASSES[model_type]],
        "num_labels": 1,
        "id2label": ID2LABEL,
        "label2id": {v: int(k) for k, v in ID2LABEL.items()},
        "pad_token_id": pad_id,
    }
