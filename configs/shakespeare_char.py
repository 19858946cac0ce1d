"""nanoGPT's "baby GPT" on Tiny Shakespeare, characters as tokens.

Default (accelerator): 6 layers, 6 heads, 384 wide, context 256 (10.7M parameters).
  python scripts/train.py --config=configs/shakespeare_char.py --workdir=/tmp/shakespeare_char
  nanoGPT reports a best val loss of ~1.47 after 5000 iterations (about 3 minutes on an A100).

`:cpu` variant (nanoGPT README's CPU run): 4 layers, 4 heads, 128 wide, context 64, batch 12,
2000 iterations, no dropout (0.8M parameters).
  python scripts/train.py --config=configs/shakespeare_char.py:cpu --workdir=/tmp/shakespeare_cpu
  nanoGPT reports val loss ~1.88 at the end; see the README for what gptjax measures on 2 cores.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 1337  # nanoGPT's seed; parameters, dropout and batches all derive from it

    c.data = ml_collections.ConfigDict()
    c.data.source = "tiny_shakespeare"  # a built-in corpus name, or a local file / glob
    c.data.path = config_dict.placeholder(str)  # optional explicit file for a built-in corpus
    c.data.val_fraction = 0.1  # the last 10% of the text is the validation split (nanoGPT)
    c.data.tokenizer = "char"  # "char" (the corpus's characters), "byte" (256 ids) or "gpt2" (BPE)
    c.data.tokenizer_path = config_dict.placeholder(str)  # gpt2: a .tiktoken ranks file (else searched)

    c.model = ml_collections.ConfigDict()
    c.model.block_size = 256  # context length in characters
    c.model.n_layer = 6
    c.model.n_head = 6
    c.model.n_kv_head = 0  # key/value heads, dividing n_head (grouped-query attention); 0: n_head (GPT-2)
    c.model.n_embd = 384
    c.model.n_head_dim = 0  # each head's width; 0: n_embd / n_head (Qwen3 sets it apart)
    c.model.qk_norm = False  # RMS norms over each head's queries and keys before rope (Qwen3's)
    c.model.sliding_window = 0  # each query sees the last W positions (Mistral's); 0: all earlier ones
    c.model.dropout = 0.2  # the model is small and the data is 1 MB: it overfits without dropout
    c.model.bias = False  # nanoGPT's train.py default: no biases in Dense and LayerNorm
    c.model.qkv_bias = False  # biases on the attention's q, k and v even with bias=False (Qwen2's)
    c.model.position = "learned"  # "learned" (GPT-2), "sinusoidal" or "rope" (rotary, in every layer)
    c.model.rope_theta = 10000.0  # position="rope": the base of its angles (RoFormer's, Llama 2's)
    c.model.rope_scaling = "none"  # or "linear", "llama3" (Llama 3.1/3.2): slower angles, longer context
    c.model.rope_factor = 1.0  # the scaling's context growth (HF's factor)
    c.model.rope_low_freq_factor = 1.0  # llama3: HF's low_freq_factor, high_freq_factor and
    c.model.rope_high_freq_factor = 4.0  # original_max_position_embeddings
    c.model.rope_original_context = 8192
    c.model.tie_embeddings = True
    c.model.score_head = False  # True: a reward model, one score per text in place of the LM head
    c.model.vocab_multiple = 1  # pad the embedding rows to a multiple of this (64 for GPT-2's vocab)
    c.model.gelu = "exact"  # nanoGPT uses torch's exact GELU (GPT-2 checkpoints use "tanh")
    c.model.mlp = "gelu"  # "gelu" (GPT-2's MLP) or "swiglu" (Llama's gated MLP)
    c.model.n_inner = 0  # MLP width; 0: 4 * n_embd (gelu), 8/3 * n_embd rounded up to 64s (swiglu)
    c.model.n_experts = 0  # E > 0: E SwiGLU experts (n_inner wide) in place of each MLP (Mixtral's MoE)
    c.model.n_experts_per_token = 2  # the top-k experts each token goes to (Mixtral's 2)
    c.model.router_aux_loss_coef = 0.01  # weight of the routers' load-balancing loss in the training loss
    c.model.moe_norm_topk = True  # a token's K router weights renormalised to sum to 1 (Mixtral's)
    c.model.moe_impl = "auto"  # ragged: the chosen experts (ragged_dot); dense: all; auto: dense on CPU
    c.model.norm = "layer"  # "layer" (LayerNorm) or "rms" (ImageGPT's: no mean, no bias)
    c.model.norm_eps = 1e-5  # added to the variance in every norm (GPT-2's, torch.nn.LayerNorm's)
    c.model.output_vocab = 0  # ids the head predicts (0: all; ImageGPT's head skips its start token)
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
    c.model.param_dtype = "float32"
    c.model.attention = "einsum"  # "einsum" (reference, has attention dropout), "xla" or "cudnn" (flash)
    c.model.remat = "none"  # recompute activations in the backward pass: none, full, dots, dots_no_batch
    c.model.scan_layers = False  # nn.scan over the blocks: compiles one block instead of n_layer
    c.model.loss_chunk = 0  # N > 0: fused LM head + loss over N positions at a time (large vocabularies)
    c.model.logits_dtype = "float32"  # the LM head's output in the loss: float32, or model.dtype (autocast's)
    c.model.lora_rank = 0  # r > 0: fine-tune low-rank adapters only (needs init_from), scaled alpha / r
    c.model.lora_alpha = 16.0
    c.model.lora_dropout = 0.0  # on the adapters' input in training (PEFT's lora_dropout)
    c.model.lora_targets = (
        "c_attn",
        "c_proj",
        "fc",
        "proj",
    )  # attention's qkv, its output, the MLP ("gate": swiglu's)

    c.opt = ml_collections.ConfigDict()
    c.opt.name = "adamw"  # or "muon": Muon on the blocks' matrices, AdamW (lr, betas) on the rest (optim.py)
    c.opt.lr = 1e-3  # high for a tiny model (nanoGPT)
    c.opt.min_lr = 1e-4  # lr / 10, as Chinchilla
    c.opt.warmup_iters = 100
    c.opt.lr_decay_iters = 5000  # = max_iters: the cosine reaches min_lr at the end
    c.opt.decay_lr = True
    c.opt.schedule = "cosine"  # after warmup, to min_lr: "cosine" (nanoGPT), "linear" or "wsd" (see optim.py)
    c.opt.cooldown_iters = 0  # "wsd": the last steps before lr_decay_iters that fall to min_lr (e.g. 20%)
    c.opt.beta1 = 0.9
    c.opt.beta2 = 0.99  # a bit higher than GPT-2's 0.95 because few tokens go into each step
    c.opt.weight_decay = 0.1  # on matrices only
    c.opt.grad_clip = 1.0  # global-norm clipping; 0 disables
    c.opt.muon_lr = 0.05  # "muon": the matrices' peak lr, on lr's schedule (modded-nanogpt's 0.05)
    c.opt.muon_momentum = 0.95  # "muon": Nesterov momentum of the matrices (modded-nanogpt's)

    c.batch_size = 64  # sequences per optimizer step (global, all devices)
    c.grad_accum = 1  # micro-batches per step: memory use ~ batch_size / grad_accum
    c.max_iters = 5000  # optimizer steps
    c.eval_interval = 250  # steps between evaluations (and checkpoints)
    c.eval_iters = 200  # batches per split in each evaluation
    c.log_interval = 10  # steps between metric lines
    c.checkpoint_interval = 250  # steps between checkpoints
    c.keep_checkpoints = 2  # how many recent checkpoints to keep
    c.init_from = "scratch"  # "scratch", "resume" (must have a checkpoint), or another workdir
    c.steps_per_call = 10  # train steps per jitted call (lax.scan): hides dispatch; intervals are multiples
    c.profile_steps = 0  # N > 0: trace N steps after the first call (jax.profiler) into workdir/profile

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = "auto"  # auto (mesh on several devices), single, pmap or mesh
    c.parallel.mesh = dict(data=-1, fsdp=1, tensor=1)  # device counts per axis; -1 takes the rest
    # logical parameter axis -> mesh axis ("embed" = model width: what FSDP shards)
    c.parallel.rules = (
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("qkv", "tensor"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
    )
    c.parallel.num_processes = 0  # 0: one (or SLURM's tasks); -1: auto-detect (TPU pods); N > 1: explicit
    c.parallel.coordinator_address = config_dict.placeholder(str)  # host:port of process 0
    c.parallel.process_id = config_dict.placeholder(int)

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "\n"  # what scripts/sample.py starts from by default
    c.sample.max_new_tokens = 500
    c.sample.temperature = 0.8
    c.sample.top_k = 200

    if arg == "cpu":
        c.model.update(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
        c.batch_size = 12
        c.max_iters = 2000
        c.opt.lr_decay_iters = 2000
        c.eval_iters = 20
        c.log_interval = 10
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of shakespeare_char; use '' or 'cpu'")
    return c
