"""What training minimises (Objective: the LM loss, a DPO-family preference loss, a reward model's
pairwise loss, or GRPO's policy loss), read from the config, and the one-line checks that the data, the
starting model and the placement fit it. The steps themselves are gptjax.train_step's."""

import dataclasses
from typing import Any

import jax

from gptjax import dpo, grpo, reward

KINDS = ("lm", "dpo", "reward", "grpo")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What training minimises: "lm", the next-token cross entropy (pretraining, supervised fine-tuning),
    "dpo", a preference loss of pairs (gptjax.dpo: its beta, label smoothing, loss type, rpo_alpha), or
    "reward", a reward model's loss of the same pairs (gptjax.reward: its center_rewards_coef), or "grpo",
    the clipped policy loss of the policy's own samples (gptjax.grpo: beta its KL weight, and the grpo_*
    fields below)."""

    kind: str = "lm"
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss: str = "sigmoid"  # dpo.LOSSES
    rpo_alpha: float = 0.0
    simpo_gamma: float = 0.5
    desirable_weight: float = 1.0  # KTO's
    undesirable_weight: float = 1.0
    # "lm" on a mixture-of-experts model (GPTConfig.n_experts; create_train_state sets it): the loss trained
    # on is the cross entropy + router_aux_coef * the layers' mean load-balancing loss (moe.mean_aux_loss),
    # as HF MixtralForCausalLM adds its router_aux_loss_coef, and "router_aux_loss" a metric. None: dense.
    router_aux_coef: float | None = None
    center_rewards_coef: float = 0.0  # "reward": TRL's center_rewards_coefficient (0: off)
    grpo_loss: str = "dapo"  # "grpo": how token losses average (grpo.LOSSES)
    epsilon: float = 0.2  # "grpo": the ratio's clip range below 1
    epsilon_high: float = 0.2  # and above 1
    importance_level: str = "token"  # "grpo": per-token ratios, or "sequence" (GSPO)
    temperature: float = 1.0  # "grpo": the sampling temperature, which divides the logits of the loss too
    max_completion: int = 1  # "grpo": max_new_tokens, dr_grpo's denominator
    on_policy: bool = True  # "grpo": num_iterations == 1, the sampler is the policy

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"objective {self.kind!r} is unknown; use one of {KINDS}")
        if self.kind == "grpo":
            self._check_grpo()
        if self.center_rewards_coef < 0:
            raise ValueError(
                f"reward.center_rewards_coefficient={self.center_rewards_coef} must be >= 0 (0: off; TRL "
                "suggests 0.01)"
            )
        if self.kind != "dpo":
            return
        if not (self.beta > 0 and 0 <= self.label_smoothing < 0.5 and self.rpo_alpha >= 0):
            raise ValueError(
                f"dpo.beta={self.beta} must be > 0, dpo.label_smoothing={self.label_smoothing} in [0, 0.5) "
                f"and dpo.rpo_alpha={self.rpo_alpha} >= 0; TRL's defaults are 0.1, 0 and 0 (off)"
            )
        if self.loss not in dpo.LOSSES:
            raise ValueError(f"dpo.loss_type={self.loss!r} is unknown; use one of {dpo.LOSSES}")
        if self.loss == "kto" and (
            self.rpo_alpha or min(self.desirable_weight, self.undesirable_weight) <= 0
        ):
            raise ValueError(
                f"dpo.loss_type='kto' takes no rpo_alpha ({self.rpo_alpha}) and weights > 0 "
                f"(desirable_weight={self.desirable_weight}, undesirable_weight={self.undesirable_weight})"
            )
        if self.loss == "orpo" and self.rpo_alpha:
            raise ValueError(
                "dpo.loss_type='orpo' has its NLL term (weight 1) already; set dpo.rpo_alpha to 0"
            )
        if self.label_smoothing and self.loss not in ("sigmoid", "simpo"):
            raise ValueError(
                f"dpo.label_smoothing smooths the sigmoid and simpo losses, not {self.loss!r}; set it to 0"
            )

    def _check_grpo(self) -> None:
        if self.grpo_loss not in grpo.LOSSES:
            raise ValueError(f"grpo.loss_type={self.grpo_loss!r} is unknown; use one of {grpo.LOSSES}")
        if self.importance_level not in grpo.LEVELS:
            raise ValueError(
                f"grpo.importance_sampling_level={self.importance_level!r} is unknown; use one of "
                f"{grpo.LEVELS}"
            )
        if not (self.beta >= 0 and self.epsilon > 0 and self.epsilon_high > 0 and self.temperature > 0):
            raise ValueError(
                f"grpo.beta={self.beta} must be >= 0, grpo.epsilon={self.epsilon}, epsilon_high="
                f"{self.epsilon_high} and temperature={self.temperature} > 0 (TRL's: 0, 0.2, 0.2, 1)"
            )

    @classmethod
    def from_config(cls, config: Any) -> "Objective":
        """A reward model's loss for a score-head model (config.model.score_head, config.reward), DPO's for
        preference data (config.data.format="preference", config.dpo), else the LM loss."""
        score_head = config.model.get("score_head")
        if config.get("grpo") is not None:
            return cls.from_grpo(config.grpo)
        if config.data.get("format") != "preference":
            if score_head:
                raise ValueError(
                    "a reward model (model.score_head=True) learns from preference pairs: set "
                    "--config.data.format=preference (configs/reward.py does), or score_head=False"
                )
            return cls()
        if score_head:
            c = config.get("reward") or {}
            return cls("reward", center_rewards_coef=c.get("center_rewards_coefficient", 0.0))
        c = config.get("dpo") or {}
        return cls(
            "dpo",
            beta=c.get("beta", 0.1),
            label_smoothing=c.get("label_smoothing", 0.0),
            loss=c.get("loss_type", "sigmoid"),
            rpo_alpha=c.get("rpo_alpha", 0.0),
            simpo_gamma=c.get("simpo_gamma", 0.5),
            desirable_weight=c.get("desirable_weight", 1.0),
            undesirable_weight=c.get("undesirable_weight", 1.0),
        )

    @classmethod
    def from_grpo(cls, g: Any) -> "Objective":
        """GRPO's, from config.grpo (configs/grpo.py; epsilon_high 0: epsilon's)."""
        return cls(
            "grpo",
            beta=g.beta,
            grpo_loss=g.loss_type,
            epsilon=g.epsilon,
            epsilon_high=g.epsilon_high or g.epsilon,
            importance_level=g.importance_sampling_level,
            temperature=g.temperature,
            max_completion=g.max_new_tokens,
            on_policy=g.num_iterations == 1,
        )

    @property
    def pairs(self) -> bool:
        """Whether batches are preference pairs (gptjax.data.preference.get_pairs): DPO's and rewards'."""
        return self.kind in ("dpo", "reward")

    @property
    def reference(self) -> bool:
        """Whether the loss compares with a reference model (not SimPO's or ORPO's)."""
        return self.kind == "dpo" and self.loss not in dpo.REFERENCE_FREE

    @property
    def nll_weight(self) -> float:
        """The weight of the chosen answers' NLL in the loss: rpo_alpha, ORPO's 1."""
        return 1.0 if self.loss == "orpo" else self.rpo_alpha

    @property
    def metrics(self) -> tuple[str, ...]:
        """Step metrics beside the loss."""
        if self.kind == "reward":
            return reward.METRICS
        if self.kind == "grpo":
            return ("kl", *grpo.METRICS) if self.beta > 0 else grpo.METRICS
        if self.kind != "dpo":
            return ("router_aux_loss",) if self.router_aux_coef is not None else ()
        if self.loss == "kto":
            return dpo.KTO_METRICS
        return (*dpo.METRICS, "nll_loss") if self.nll_weight else dpo.METRICS


LM = Objective()  # the default: next-token cross entropy


def check_run(objective: Objective, dataset: Any, config: Any, mode: str, starts_trained: bool) -> None:
    """One-line ValueErrors, before anything runs, for an objective that cannot learn from `dataset`
    (gptjax.data.Dataset: unpaired examples carry train_labels), be placed in parallel.mode `mode`, or
    start from scratch (not `starts_trained`: no checkpoint to resume, no init_from model)."""
    if objective.kind == "grpo":  # gptjax.grpo.check_config checked the run before its data was read
        return
    unpaired = dataset.train_labels is not None
    if objective.kind == "reward" and unpaired:
        raise ValueError(
            "a reward model learns from pairs (prompt, chosen, rejected), not unpaired examples (prompt, "
            "completion, label); pass pairs in --config.data.source"
        )
    if objective.kind == "dpo" and (objective.loss == "kto") != unpaired:
        raise ValueError(
            "dpo.loss_type='kto' learns from unpaired examples (prompt, completion, label), the other losses "
            "from pairs (prompt, chosen, rejected): set --config.dpo.loss_type to kto or another to match"
        )
    if objective.pairs and mode == "pmap" and config.batch_size % jax.device_count():
        raise ValueError(
            f"pmap mode splits batch_size={config.batch_size} preference pairs over {jax.device_count()} "
            "devices, each pair on one: use a batch_size divisible by the device count"
        )
    if objective.reference and not starts_trained:
        raise ValueError(
            "DPO (data.format='preference') fine-tunes a trained model, its own reference: set "
            "--config.init_from=<workdir, HF directory or Hub id>"
        )
