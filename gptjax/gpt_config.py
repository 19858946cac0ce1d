"""GPTConfig, the frozen dataclass that fixes a model's shapes and numerics, with its checks and the table
of named sizes (VARIANTS). gptjax.model builds the model from it; every module takes it, not a ConfigDict.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from gptjax import attention, moe
from gptjax.layers import LoRA, RopeScaling, default_mlp_width

# Named sizes. baby = nanoGPT's shakespeare_char model, baby-cpu its CPU run; gpt2* = OpenAI's GPT-2
# family (Radford et al. 2019, table 2; HF config.json of each checkpoint).
VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32),
    "baby-cpu": dict(n_layer=4, n_head=4, n_embd=128),
    "baby": dict(n_layer=6, n_head=6, n_embd=384),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

POSITIONS = ("learned", "sinusoidal", "rope")
ROPE_SCALINGS = ("none", "linear", "llama3")  # gptjax.layers.RopeScaling's kinds
# What a rematerialised block keeps from the forward pass; the rest is recomputed in the backward.
REMAT_POLICIES = {
    "none": None,  # no remat: keep everything
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only block inputs: least memory
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the cheap rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weights' matmuls only
}
GELUS = ("tanh", "exact", "quick")
MLPS = ("gelu", "swiglu")
LORA_TARGETS = ("c_attn", "c_proj", "fc", "gate", "proj")  # attention's qkv and output, the MLP's layers
NORMS = ("layer", "rms")
KERNEL_LAYOUTS = ("in_out", "out_in")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Everything that fixes the model's shapes and numerics; hashable, so jit can treat it as static."""

    vocab_size: int
    block_size: int = 1024  # context length: the most positions the model attends over
    n_layer: int = 12
    n_head: int = 12
    # Key/value heads (grouped-query attention; 1: multi-query): fewer make the KV cache n_head / n_kv_head
    # times smaller. 0: n_head, GPT-2's multi-head attention.
    n_kv_head: int = 0
    n_embd: int = 768  # D
    # H, each head's width: q, k and v are N (K) x H, c_proj maps N * H -> D. 0: D / N (GPT-2, Llama); Qwen3
    # sets it apart (Qwen3-0.6B: D 1024, N 16, H 128).
    n_head_dim: int = 0
    # RMS norms (norm_eps, a [H] scale) over each head's queries and keys before rope (Qwen3's q/k_norm).
    qk_norm: bool = False
    # Sliding-window attention (Mistral's sliding_window): each query attends to the last W positions,
    # itself included, in every layer; 0: to all earlier positions (W >= block_size is the same).
    sliding_window: int = 0
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches
    bias: bool = True  # biases in Dense layers and LayerNorms (GPT-2: True)
    # Biases on the attention's query/key/value projection (c_attn) even when bias=False (Qwen2); with
    # bias=True c_attn has one anyway.
    qkv_bias: bool = False
    # "learned" (GPT-2) or "sinusoidal" (a fixed table) added to the embeddings, or "rope": q and k rotated
    # in every attention layer (GPT-NeoX, Llama; gptjax.layers.rope), by angles position * rope_theta^(-2i/H)
    position: str = "learned"
    rope_theta: float = 10000.0  # RoPE's base (HF's rope_theta; Llama 3 uses 500000)
    # RoPE's frequencies slowed for a longer context than pretraining's (HF's rope_parameters.rope_type;
    # gptjax.layers.RopeScaling): "none", "linear" (all divided by rope_factor) or "llama3" (Llama 3.1/3.2:
    # the low ones divided by rope_factor, the high ones kept, a blend between; the three fields below).
    rope_scaling: str = "none"
    rope_factor: float = 1.0  # context growth the scaling is for (HF's factor; Llama 3.1: 8, 3.2: 32)
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths over rope_original_context / this are divided
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths under rope_original_context / this are kept
    rope_original_context: int = 8192  # llama3: the pretraining context (original_max_position_embeddings)
    tie_embeddings: bool = True  # LM head = token embedding transposed (GPT-2)
    # A reward model (TRL's RewardTrainer; HF *ForSequenceClassification with num_labels=1): in place of the
    # LM head a `score` vector [D] gives every position a float32 score (GPT returns scores_BT), a sequence's
    # reward is its last token's (gptjax.reward).
    score_head: bool = False
    vocab_multiple: int = (
        1  # embedding rows padded to a multiple (64: faster matmuls); pads get no probability
    )
    gelu: str = "tanh"  # GELU form: "tanh" approximation (GPT-2's gelu_new), "exact" (nanoGPT), "quick"
    mlp: str = "gelu"  # "gelu" (GPT-2's MLP) or "swiglu" (Llama's gated MLP: a third matrix, the gate)
    # MLP width F (HF GPT-2's n_inner); 0: 4 * n_embd for "gelu", and for "swiglu" 2/3 of that rounded up
    # to a multiple of 64, which keeps its parameter count near the GELU MLP's (as Llama's).
    n_inner: int = 0
    # Mixture of experts (gptjax.moe, Mixtral's): n_experts > 0 puts in every block, in place of the MLP,
    # n_experts SwiGLU experts of width F (n_inner's; no biases) and a router that sends each token to
    # n_experts_per_token of them; 0: the dense MLP. The parameters grow about E times, a token's FLOPs K/E.
    n_experts: int = 0
    n_experts_per_token: int = 2  # K, the top-k experts of each token (Mixtral's num_experts_per_tok: 2)
    # Weight of the routers' load-balancing loss (their mean over layers) in the training loss; 0.01 as
    # Switch Transformer's alpha and MaxText's load_balance_loss_weight (HF MixtralConfig's default: 0.001).
    router_aux_loss_coef: float = 0.01
    # "ragged": each token's K experts alone, tokens sorted by expert through jax.lax.ragged_dot (dropless,
    # MaxText's megablox path; on CPU JAX runs it as a masked product over all experts, K times "dense"'s
    # work); "dense": every expert on every token, weighted 0 where not chosen (the reference); "auto":
    # dense on CPU, ragged on GPUs and TPUs.
    moe_impl: str = "auto"
    # Each token's K router probabilities renormalised to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob=True),
    # or used as they are (False: Qwen3-MoE's norm_topk_prob=False, OLMoE).
    moe_norm_topk: bool = True
    norm: str = "layer"  # "layer": LayerNorm (GPT-2); "rms": no mean subtracted, no bias (ImageGPT, Llama)
    norm_eps: float = 1e-5  # added to the variance (GPT-2's layer_norm_epsilon, Llama's rms_norm_eps)
    # Ids the LM head predicts: the first output_vocab (0: all vocab_size); the rest only ever start a
    # sequence and get probability 0 (ImageGPT's head has no row for its start token).
    output_vocab: int = 0
    dtype: str = "float32"  # compute dtype of matmuls and activations
    param_dtype: str = "float32"  # storage dtype of parameters
    attention: str = (
        "einsum"  # "einsum" (reference), "xla" or "cudnn" (flash) via jax.nn.dot_product_attention
    )
    remat: str = "none"  # activation checkpointing per block: a REMAT_POLICIES name
    scan_layers: bool = False  # nn.scan over blocks: one compiled block, params stacked [L, ...]
    # Dense kernels [in, out] (training, checkpoints) or transposed [out, in]: faster one-row
    # matrix-vector products on CPU; gptjax.sample uses it for batch-1 decoding (see layers.Dense).
    kernel_layout: str = "in_out"
    # Training loss: 0 computes it from the full float32 logits (B x T x V); N > 0 fuses the LM head and
    # the cross entropy over chunks of N positions, gradients included (lm_head_loss), so those logits never
    # exist at once: less memory and traffic for large vocabularies.
    loss_chunk: int = 0
    # dtype of the LM head's output in the training loss: "float32", or the compute dtype as PyTorch's
    # autocast gives (bf16 logits: half the traffic of B x T x V); the softmax and the loss are float32
    # either way, and logits returned for sampling are always float32.
    logits_dtype: str = "float32"
    # LoRA fine-tuning: rank > 0 adds low-rank adapters to the Dense layers in lora_targets and trains only
    # them (gptjax.layers.LoRA); load_params merges them into the kernels (merge_lora).
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0  # on the adapters' input, in training (PEFT's lora_dropout)
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1; set model.{name} to 1 or more")
        for name in ("dropout", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be in [0, 1); set model.{name} to e.g. 0.0 or 0.1"
                )
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be >= 0 (0: no window)")
        if self.n_head_dim < 0:
            raise ValueError(f"n_head_dim={self.n_head_dim} must be >= 0 (0: n_embd / n_head)")
        if self.n_head_dim * self.n_head == self.n_embd:  # n_embd / n_head written out: its 0, one config
            object.__setattr__(self, "n_head_dim", 0)
        if not self.n_head_dim and self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "pick n_head that divides n_embd (head dim = n_embd / n_head), or set n_head_dim"
            )
        if self.n_kv_head < 0 or self.n_head % self.kv_heads:
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0: n_head); each key/value "
                "head serves n_head / n_kv_head query heads"
            )
        if self.mlp not in MLPS:
            raise ValueError(f"mlp={self.mlp!r} is unknown; use one of {MLPS}")
        if self.n_inner < 0:
            raise ValueError(f"n_inner={self.n_inner} must be >= 0 (0: the MLP kind's default width)")
        if self.n_experts < 0 or (self.n_experts and self.mlp != "swiglu"):
            raise ValueError(
                f"n_experts={self.n_experts} must be >= 0 (0: the dense MLP), and with experts mlp='swiglu' "
                "(Mixtral's experts are SwiGLU MLPs); set model.mlp='swiglu'"
            )
        if self.n_experts and not 1 <= self.n_experts_per_token <= self.n_experts:
            raise ValueError(
                f"n_experts_per_token={self.n_experts_per_token} must be in [1, n_experts={self.n_experts}]"
            )
        if self.router_aux_loss_coef < 0:
            raise ValueError(
                f"router_aux_loss_coef={self.router_aux_loss_coef} must be >= 0 (0: no router loss)"
            )
        if self.moe_impl not in moe.IMPLEMENTATIONS:
            raise ValueError(f"moe_impl={self.moe_impl!r} is unknown; use one of {moe.IMPLEMENTATIONS}")
        if self.gelu not in GELUS:
            raise ValueError(f"gelu={self.gelu!r} is unknown; use one of {GELUS}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is unknown; use one of {NORMS}")
        if not 0 <= self.output_vocab <= self.vocab_size:
            raise ValueError(
                f"output_vocab={self.output_vocab} must be in [0, vocab_size={self.vocab_size}] (0: all ids)"
            )
        if self.attention not in attention.IMPLEMENTATIONS:
            raise ValueError(
                f"attention={self.attention!r} is unknown; use one of {attention.IMPLEMENTATIONS}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r} is unknown; use one of {list(REMAT_POLICIES)}")
        if self.kernel_layout not in KERNEL_LAYOUTS:
            raise ValueError(f"kernel_layout={self.kernel_layout!r} is unknown; use one of {KERNEL_LAYOUTS}")
        if self.position not in POSITIONS:
            raise ValueError(f"position={self.position!r} is unknown; use one of {POSITIONS}")
        if self.position == "rope" and self.head_dim % 2:
            source, fix = ("n_head_dim", "n_head_dim") if self.n_head_dim else ("n_embd / n_head", "n_head")
            raise ValueError(
                f"position='rope' turns channel pairs, and the head dim {source} = {self.head_dim} is odd; "
                f"pick {fix} so that it is even"
            )
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"rope_scaling={self.rope_scaling!r} is unknown; use one of {ROPE_SCALINGS}")
        if self.rope_scaling != "none" and self.position != "rope":
            raise ValueError(
                f"rope_scaling={self.rope_scaling!r} scales rotary positions; set model.position='rope' too"
            )
        if self.rope_factor < 1 or (self.rope_scaling == "none" and self.rope_factor != 1):
            raise ValueError(
                f"rope_factor={self.rope_factor} with rope_scaling={self.rope_scaling!r}: the factor must be "
                ">= 1, and 1 without scaling; set model.rope_scaling to 'linear' or 'llama3'"
            )
        if self.rope_scaling == "llama3" and not (
            0 < self.rope_low_freq_factor < self.rope_high_freq_factor and self.rope_original_context >= 1
        ):
            raise ValueError(
                f"rope_scaling='llama3' needs 0 < rope_low_freq_factor < rope_high_freq_factor and "
                f"rope_original_context >= 1; got {self.rope_low_freq_factor}, {self.rope_high_freq_factor}, "
                f"{self.rope_original_context} (Llama 3.1's: 1, 4, 8192)"
            )
        if self.logits_dtype not in ("float32", self.dtype):
            raise ValueError(
                f"logits_dtype={self.logits_dtype!r} must be 'float32' or the compute dtype {self.dtype!r}"
            )
        if self.loss_chunk < 0:
            raise ValueError(f"loss_chunk={self.loss_chunk} must be >= 0 (0: no chunking)")
        targets = [self.lora_targets] if isinstance(self.lora_targets, str) else self.lora_targets
        targets = tuple(t.strip() for item in targets for t in item.split(","))  # a flag gives ("c_attn,fc",)
        object.__setattr__(self, "lora_targets", targets)  # a list from a config: hashable like the rest
        if self.lora_rank < 0 or (self.lora_rank and not targets):
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0 (0: no LoRA) with lora_targets set")
        if not set(targets) <= set(LORA_TARGETS):
            raise ValueError(f"lora_targets={list(targets)} must name layers of {LORA_TARGETS}")
        if self.lora_rank and self.n_experts and set(targets) & {"fc", "gate", "proj"}:
            raise ValueError(
                f"lora_targets={list(targets)}: a MoE model's experts take no LoRA adapters; adapt the "
                "attention alone, --config.model.lora_targets=c_attn,c_proj"
            )

    @property
    def head_dim(self) -> int:
        """H: n_head_dim, or n_embd / n_head when it is 0."""
        return self.n_head_dim or self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """F: n_inner, or the MLP kind's default (see n_inner)."""
        return self.n_inner or default_mlp_width(self.n_embd, self.mlp)

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is 0."""
        return self.n_kv_head or self.n_head

    @property
    def lora(self) -> LoRA | None:
        if not self.lora_rank:
            return None
        return LoRA(self.lora_rank, self.lora_alpha, self.lora_targets, self.lora_dropout)

    @property
    def scaled_rope(self) -> RopeScaling | None:
        """rope_scaling and its fields as gptjax.layers.RopeScaling; None when unscaled."""
        if self.rope_scaling == "none":
            return None
        return RopeScaling(
            self.rope_scaling,
            self.rope_factor,
            self.rope_low_freq_factor,
            self.rope_high_freq_factor,
            self.rope_original_context,
        )

    @property
    def predicted_vocab(self) -> int:
        """Ids the LM head gives a probability: output_vocab, else every id."""
        return self.output_vocab or self.vocab_size

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @classmethod
    def from_mapping(cls, model: Mapping[str, Any], **overrides: Any) -> "GPTConfig":
        """Builds the config from `config.model` (a ConfigDict or dict); `variant` names a VARIANTS row."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = dict(model)
        variant = kwargs.pop("variant", None)
        if variant:
            if variant not in VARIANTS:
                raise ValueError(f"model variant {variant!r} is unknown; use one of {list(VARIANTS)}")
            kwargs = {**VARIANTS[variant], **{k: v for k, v in kwargs.items() if v is not None}}
        kwargs.update(overrides)
        unset = sorted(k for k, v in kwargs.items() if v is None)
        if unset:  # fields a fine-tuning config leaves to its init_from model (gptjax.init_from.fill_model)
            raise ValueError(
                f"config.model.{', '.join(unset)} unset (None): fine-tuning takes them from "
                f"config.init_from's model; otherwise set them, e.g. --config.model.{unset[0]}=..."
            )
        unknown = set(kwargs) - fields
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**kwargs)
