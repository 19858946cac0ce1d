"""nanoGPT's baby GPT on Tiny Shakespeare with Llama's architecture: rotary positions, grouped-query
attention (half as many key/value heads as query heads), a SwiGLU MLP and RMS norms, no biases. The same
sizes, data, schedule and seed as configs/shakespeare_char.py; only the block differs.

Default (accelerator): 6 layers, 6 heads (3 key/value heads), 384 wide, context 256. Not measured here.
  python scripts/train.py --config=configs/llama_char.py --workdir=/tmp/llama_char

`:cpu` variant: nanoGPT's CPU run, 4 layers, 4 heads (2 key/value heads), 128 wide, context 64 (0.8M
parameters, as shakespeare_char.py:cpu's).
  python scripts/train.py --config=configs/llama_char.py:cpu --workdir=/tmp/llama_cpu
  Best val loss 1.666 at step 1750 in 81 s on 2 CPU cores (21k tokens/s), against 1.905 for the GPT-2
  block in the same run length (README, Results).
"""

import ml_collections

from configs import shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = shakespeare_char.get_config(arg)
    c.model.position = "rope"  # rotary positions in every attention layer, base rope_theta (10000)
    c.model.n_kv_head = c.model.n_head // 2  # grouped-query attention: the KV cache half the size
    c.model.mlp = "swiglu"  # SiLU-gated MLP, 8/3 * n_embd wide rounded up to 64s (Llama's)
    c.model.norm = "rms"  # RMSNorm: no mean subtracted, no bias
    c.model.bias = False  # no biases anywhere (shakespeare_char.py has none either)
    return c
