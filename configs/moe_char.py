"""configs/llama_char.py (nanoGPT's baby GPT on Tiny Shakespeare with Llama's block) with Mixtral's sparse
mixture of experts in place of each MLP: 4 SwiGLU experts half as wide as the Llama's MLP, each token
routed to 2 of them (gptjax.moe), so a token's FLOPs are the Llama's and the MLPs hold twice its
parameters. The training loss adds 0.01 x the routers' load-balancing loss (metric router_aux_loss, K = 2
when balanced); the validation loss is the cross entropy alone, comparable with llama_char's.

Default (accelerator): 6 layers, 6 heads (3 key/value heads), 384 wide, context 256; moe_impl "auto":
"ragged" on a GPU or TPU (jax.lax.ragged_dot: only the chosen experts compute). Not measured here.
  python scripts/train.py --config=configs/moe_char.py --workdir=/tmp/moe_char

`:cpu` variant: llama_char.py:cpu's 4 layers, 4 heads, 128 wide, context 64; "auto" is "dense" on CPU (where
ragged_dot runs as a masked product over every expert, twice dense's work for top-2).
  python scripts/train.py --config=configs/moe_char.py:cpu --workdir=/tmp/moe_cpu
  Best val loss 1.661 at step 1750 (llama_char.py:cpu: 1.666) in 159 s on 2 CPU cores, 10.3k tokens/s
  (half llama_char's: "dense" runs all 4 experts); router_aux_loss 2.00-2.05 throughout (balanced: K = 2).
"""

import ml_collections

from configs import llama_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = llama_char.get_config(arg)
    c.model.n_experts = 4  # SwiGLU experts per layer, in place of the MLP
    c.model.n_experts_per_token = 2  # each token's top-2 experts by router probability (Mixtral's)
    # Each expert's width: half of llama_char's SwiGLU MLP (1024 at 384 wide, 384 at 128), so that a token's
    # 2 experts cost that MLP's FLOPs.
    c.model.n_inner = 192 if arg == "cpu" else 512
    c.model.router_aux_loss_coef = 0.01  # load-balancing loss weight (Switch Transformer's, MaxText's)
    c.model.moe_impl = "auto"  # dense on CPU (ragged_dot is a masked product over all experts there)
    return c
