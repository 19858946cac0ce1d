"""Benchmarks; prints one JSON object.

  python scripts/bench.py --mode=generate   # ~3 minutes on 2 CPU cores with the HF baseline
  python scripts/bench.py --mode=train --config=configs/gpt2.py [--config.batch_size=64 --config.grad_accum=1]
  python scripts/bench.py --mode=train --config=configs/gpt2.py --variant=model.loss_chunk=128 \
      --variant=model.remat=dots   # each variant measured after the base config, in the same run
  python scripts/bench.py --mode=assisted --model=TARGET_WORKDIR --assistant=DRAFT_WORKDIR
  python scripts/bench.py --mode=assisted --model=TARGET_WORKDIR   # prompt lookup: no draft model

train: gptjax.benchmark.benchmark_train on the config's model, batch and parallel mode with random
tokens: compile time, step time (median of --steps calls after --warmup), tokens/s, model FLOPs per
token (6N + 12 L T D), MFU against the device's peak (none on CPU) and peak memory. Each --variant is
measured after the base config in the same process (a JSON list then): ratios between them are fair.

generate: tokens/s of gptjax.sample (top-k 50 sampling, fp32, random weights) at batch 1 and 8 for
nanoGPT's shakespeare_char:cpu size and GPT-2 124M, and of HF transformers' PyTorch generate() on the
same sizes in the same run when torch and transformers are installed
(`pip install torch==2.13.0 transformers`). Tokens/s = batch * new tokens / wall time of one whole
generate call (prompt encoding excluded: token ids in, token ids out), best of --repeats after a warm-up
call (gptjax compiles there). Also the memory-bandwidth floor of GPT-2 124M at batch 1: each new token
reads every fp32 weight once, so tokens/s <= read bandwidth / weight bytes.

assisted: assisted generation (gptjax.assisted) of the --model checkpoint with the --assistant draft, side
by side with the model alone and the draft alone, greedy and sampling (temperature 1, no top-k), one
prompt at a time (batch 1, prompt + new tokens = the smaller block_size): tokens/s as above (all prompts
over the time of their calls, best of --repeats rounds that time every variant in turn), the share of
proposals accepted, tokens per model call, and for greedy whether the text is the model's own. Without
--assistant the proposals come from prompt lookup (prompt_lookup_num_tokens = each --num_assistant_tokens,
n-grams up to 2 tokens), the same measurements without a draft to time alone.
"""

import dataclasses
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from configs import shakespeare_char
from gptjax import assisted, benchmark, cli, sample
from gptjax.model import GPT, GPTConfig, count_params

flags.DEFINE_enum("mode", "generate", ["generate", "train", "assisted"], "What to benchmark.")
flags.DEFINE_list("sizes", ["shakespeare_char_cpu", "gpt2"], "Model sizes (see SIZES).")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Prompts per generate call.")
flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (the best is reported).")
flags.DEFINE_boolean("hf", True, "Also time HF transformers generate() when torch is installed.")
config_flags.DEFINE_config_file(
    "config", None, "train: the experiment config (path[:variant]).", lock_config=True
)
flags.DEFINE_integer("steps", 10, "train: timed calls (each config.steps_per_call steps).")
flags.DEFINE_integer("warmup", 2, "train: untimed calls after compilation.")
flags.DEFINE_string(
    "profile_dir",
    None,
    "train: also trace two untimed calls there (TensorBoard/Perfetto) and list the top ops.",
)
flags.DEFINE_multi_string(
    "variant",
    [],
    "train: also measure the config with these overrides, e.g. 'model.loss_chunk=128,batch_size=32' "
    "(repeatable), side by side in the same run; prints a JSON list, the base config first.",
)
flags.DEFINE_integer("vocab_size", None, "train: vocabulary (default: config.data.tokenizer's).")
flags.DEFINE_string("model", None, "assisted: the model's workdir.")
flags.DEFINE_string(
    "assistant", None, "assisted: the draft model's workdir (the same tokenizer); none: prompt lookup."
)
flags.DEFINE_list("num_assistant_tokens", ["3", "5"], "assisted: tokens the draft proposes at a time.")
flags.DEFINE_multi_string(
    "prompt", ["\n", "ROMEO:\n", "First Citizen:\n"], "assisted: prompts, each generated alone (repeatable)."
)
FLAGS = flags.FLAGS

TOP_K = 50  # HF's top_k default when sampling
# name -> (GPTConfig, prompt tokens, new tokens). Prompt + new tokens fit the context, as HF's GPT-2
# cannot go past n_positions.
SIZES = {
    "shakespeare_char_cpu": (
        GPTConfig.from_mapping(shakespeare_char.get_config("cpu").model.to_dict(), vocab_size=65),
        1,
        63,
    ),
    "gpt2": (GPTConfig.from_mapping({"variant": "gpt2"}, vocab_size=50257, block_size=1024), 16, 128),
}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_gptjax(cfg: GPTConfig, prompts: np.ndarray, new_tokens: int, repeats: int) -> float:
    params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    options = sample.GenerateOptions(max_new_tokens=new_tokens, top_k=TOP_K, seed=0)
    return best_time(lambda: sample.generate_ids(params, cfg, prompts, options), repeats)


def time_hf(cfg: GPTConfig, prompts: np.ndarray, new_tokens: int, repeats: int) -> float:
    import torch
    import transformers

    hf_config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
    )
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    model.generation_config.eos_token_id = None  # always the full number of new tokens
    ids = torch.as_tensor(prompts, dtype=torch.long)

    def generate():
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=TOP_K,
                max_new_tokens=new_tokens,
                pad_token_id=0,
            )

    return best_time(generate, repeats)


def read_bandwidth(n_bytes: int = 512 * 2**20) -> float:
    """Bytes/s that XLA streams from memory (a jitted sum of a 512 MiB array, best of 5)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return n_bytes / best_time(lambda: total(x).block_until_ready(), 5)


def benchmark_generate() -> dict:
    hf = None
    if FLAGS.hf:
        try:
            import torch
            import transformers

            hf = {"torch": torch.__version__, "transformers": transformers.__version__}
            transformers.logging.set_verbosity_error()
        except ImportError:
            pass
    out = {
        "mode": "generate",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.devices()[0]}",
        "sampling": f"top_k={TOP_K}, temperature=1, float32, random weights",
        "hf": hf
        or ("not available: pip install torch==2.13.0 transformers" if FLAGS.hf else "skipped (--nohf)"),
        "results": [],
    }
    rng = np.random.default_rng(0)
    unknown = sorted(set(FLAGS.sizes) - set(SIZES))
    if unknown:
        raise ValueError(f"--sizes={','.join(unknown)} unknown; pick from {','.join(SIZES)}")
    for name in FLAGS.sizes:
        cfg, prompt_len, new_tokens = SIZES[name]
        for batch in map(int, FLAGS.batch_sizes):
            prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len))
            row = dict(model=name, batch=batch, prompt_tokens=prompt_len, new_tokens=new_tokens)
            load_before = os.getloadavg()[0]  # other work on the cores swings the ratio (HF suffers more)
            seconds = time_gptjax(cfg, prompts, new_tokens, FLAGS.repeats)
            row["gptjax_tok_s"] = round(batch * new_tokens / seconds, 1)
            if name == "gpt2" and batch == 1:
                bandwidth = read_bandwidth()  # right after, so that both see the same machine load
            if hf:
                seconds = time_hf(cfg, prompts, new_tokens, FLAGS.repeats)
                row["hf_tok_s"] = round(batch * new_tokens / seconds, 1)
                row["speedup"] = round(row["gptjax_tok_s"] / row["hf_tok_s"], 2)
            row["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2), os.cpu_count()]
            out["results"].append(row)
            print(json.dumps(row), flush=True)
    batch1 = [r for r in out["results"] if r["model"] == "gpt2" and r["batch"] == 1]
    if batch1:
        params = jax.eval_shape(GPT(SIZES["gpt2"][0]).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
        weight_bytes = 4 * count_params(params["params"])
        floor = bandwidth / weight_bytes
        out["gpt2_batch1_floor"] = {
            "weights_MB": round(weight_bytes / 1e6),
            "read_GB_s": round(bandwidth / 1e9, 1),
            "floor_tok_s": round(floor, 1),
            "gptjax_fraction_of_floor": round(batch1[0]["gptjax_tok_s"] / floor, 2),
        }
    return out


def benchmark_assisted() -> dict:
    if not FLAGS.model:
        raise app.UsageError(
            "--mode=assisted needs --model=WORKDIR (and --assistant=WORKDIR, or prompt lookup)"
        )
    params, cfg, tokenizer, _ = sample.load(FLAGS.model)
    lookup = not FLAGS.assistant
    draft_params, draft_cfg = (None, None) if lookup else assisted.load_assistant(FLAGS.assistant, tokenizer)
    prompts = [tokenizer.encode(cli.unescape(p)) for p in FLAGS.prompt]
    context = cfg.block_size if lookup else min(cfg.block_size, draft_cfg.block_size)
    new_tokens = context - max(map(len, prompts))
    out = {
        "mode": "assisted",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.devices()[0]}",
        "model": dict(
            workdir=FLAGS.model, params=count_params(params), n_layer=cfg.n_layer, n_embd=cfg.n_embd
        ),
        "assistant": "prompt lookup"
        if lookup
        else dict(
            workdir=FLAGS.assistant,
            params=count_params(draft_params),
            n_layer=draft_cfg.n_layer,
            n_embd=draft_cfg.n_embd,
        ),
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "results": [],
    }
    n_total = new_tokens * len(prompts)  # no EOS token in a character vocabulary: every call writes all
    Ks = list(map(int, FLAGS.num_assistant_tokens))
    for decoding, options in [("greedy", dict(do_sample=False)), ("sample", dict(temperature=1.0))]:
        options = sample.GenerateOptions(max_new_tokens=new_tokens, seed=0, **options)
        runs = {"model": lambda p: sample.generate_ids(params, cfg, [p], options)[0][0]}
        if not lookup:
            runs["assistant"] = lambda p: sample.generate_ids(draft_params, draft_cfg, [p], options)[0][0]
        for K in Ks:
            if lookup:
                with_K = dataclasses.replace(options, prompt_lookup_num_tokens=K)
                runs[K] = lambda p, o=with_K: assisted.generate(params, cfg, None, None, [p], o)[0][0]
            else:
                runs[K] = lambda p, K=K: assisted.generate(
                    params, cfg, draft_params, draft_cfg, [p], options, num_assistant_tokens=K
                )[0][0]
        # Interleaved (model, assistant, each K, then again): a change in the machine's load hits all alike.
        load_before = os.getloadavg()[0]
        seconds, results = {name: [] for name in runs}, {}
        for i in range(FLAGS.repeats + 1):  # the first round warms up (and compiles)
            for name, fn in runs.items():
                start = time.perf_counter()
                results[name] = [fn(p) for p in prompts]
                if i:
                    seconds[name].append(time.perf_counter() - start)
        tok_s = {name: round(n_total / min(times), 1) for name, times in seconds.items()}
        for K in Ks:
            stats = {k: sum(r[2][k] for r in results[K]) for k in ("proposed", "accepted", "calls")}
            row = dict(
                decoding=decoding,
                **{"prompt_lookup_num_tokens" if lookup else "num_assistant_tokens": K},
                model_tok_s=tok_s["model"],
                assisted_tok_s=tok_s[K],
                speedup=round(tok_s[K] / tok_s["model"], 2),
                acceptance_rate=round(stats["accepted"] / max(stats["proposed"], 1), 3),
                tokens_per_model_call=round(n_total / stats["calls"], 2),
            )
            if not lookup:
                row["assistant_alone_tok_s"] = tok_s["assistant"]
            if decoding == "greedy":
                row["same_text_as_model"] = all(
                    np.array_equal(a[0], b) for a, b in zip(results[K], results["model"], strict=True)
                )
            row["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2), os.cpu_count()]
            out["results"].append(row)
            print(json.dumps(row), flush=True)
    return out


def main(argv):
    del argv
    if FLAGS.mode == "assisted":
        print(json.dumps(benchmark_assisted(), indent=1))
        return
    if FLAGS.mode == "train":
        if FLAGS.config is None:
            raise app.UsageError("--mode=train needs --config=configs/....py")
        # The tokenizer's ids: GPT-2 BPE, bytes, or Tiny Shakespeare's 65 characters.
        vocab = FLAGS.vocab_size or {"gpt2": 50257, "byte": 256}.get(FLAGS.config.data.tokenizer, 65)
        configs = [FLAGS.config] + [benchmark.with_overrides(FLAGS.config, v) for v in FLAGS.variant]
        results = []
        for i, config in enumerate(configs):
            profile_dir = FLAGS.profile_dir and (
                FLAGS.profile_dir if i == 0 else f"{FLAGS.profile_dir}/variant_{i}"
            )
            result = benchmark.benchmark_train(
                config, vocab, steps=FLAGS.steps, warmup=FLAGS.warmup, profile_dir=profile_dir
            )
            results.append({"variant": FLAGS.variant[i - 1] if i else "", **result})
            if FLAGS.variant:  # each as it is measured (stderr): a run cut short keeps what it measured
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        print(json.dumps(results if FLAGS.variant else results[0]))
        return
    print(json.dumps(benchmark_generate(), indent=1))


if __name__ == "__main__":
    cli.run(main)
