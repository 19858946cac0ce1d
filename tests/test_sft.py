"""Supervised fine-tuning end to end: configs/sft.py:tiny on prompt/completion pairs, then sampling."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import sft
from gptjax import evaluate
from gptjax.data import get_batch
from gptjax.data.from_config import load_data
from gptjax.metric_writer import read_metrics
from gptjax.model import GPT
from gptjax.sample import complete, load
from gptjax.serve import Served
from gptjax.serve_completions import chat_completions
from gptjax.train import load_params, train_and_evaluate


def first_letter_task(path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Prompts of 4 random letters a-h and ">", completions that repeat the first letter three times:
    the answer is in the prompt, at a fixed place; the rest of the prompt is noise to be read, not learned."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        word = "".join(rng.choice(list("abcdefgh"), size=4))
        pairs.append((word + ">", word[0] * 3 + "."))
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_fine_tuned_model_answers_val_prompts(tmp_path, tmp_cache, packing):
    """One example per row, or packed: 3 examples of 9 characters per row of 33 (so 3x the examples per
    step, each still computed alone)."""
    pairs = first_letter_task(tmp_path / "task.jsonl", 1000)
    config = sft.get_config("tiny")
    config.data.source = str(tmp_path / "task.jsonl")
    config.data.packing = packing
    train_and_evaluate(config, tmp_path / "w")
    records = read_metrics(tmp_path / "w")
    val = [r["val_loss"] for r in records if "val_loss" in r]
    # The loss is over the 4 completion targets only: ~ln 10 = 2.3 at the start (measured 2.14), and the
    # answer is fully determined by the prompt, so it nearly vanishes (measured 0.012 at step 200). A loss
    # that also counted the prompt could not fall below 0.78 (3 of its 8 targets random letters, ln 8).
    assert val[0] > 1.9 and val[-1] < 0.1, val
    prompts = [p for p, _ in pairs[900:940]]  # the val split: the last 10% of the file
    got = complete(tmp_path / "w", prompts, max_new_tokens=4, do_sample=False)
    answers = [c for _, c in pairs[900:940]]
    right = sum(g.text == a for g, a in zip(got, answers, strict=True))
    # measured: all 100 val prompts right
    assert right >= 38, [(g.text, a) for g, a in zip(got, answers, strict=True)]

    # scripts/eval.py --random_batches measures the loss training logs: over the completions only.
    params, cfg, tokenizer, saved = load_params(tmp_path / "w")
    val_rows = load_data(config.data, tokenizer, block_size=cfg.block_size).val
    got = evaluate.random_batch_loss(params, cfg, val_rows, batch_size=16, batches=2, group=1)
    assert val_rows.ndim == (3 if packing else 2)
    want = [
        GPT(cfg).apply(
            {"params": params}, x_BT, targets_BT=y_BT, segments_BT=segments[0] if segments else None
        )[0]
        for x_BT, y_BT, *segments in (
            get_batch(val_rows, batch_size=16, block_size=32, seed=0, step=i, split="val") for i in (0, 1)
        )
    ]
    assert got["loss"] == pytest.approx(float(np.mean(want)), rel=1e-5)


@pytest.mark.slow
def test_a_model_fine_tuned_on_conversations_answers_chat_requests(tmp_path, tmp_cache):
    """The same task as conversations ({"messages"} lines, ChatML): the model learns the answer and the
    <|im_end|> after it, so /v1/chat/completions returns just the answer, finish_reason "stop"."""
    rng = np.random.default_rng(1)
    words = ["".join(rng.choice(list("abcdefgh"), size=4)) for _ in range(1000)]
    lines = [
        {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w[0] * 3}]}
        for w in words
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = sft.get_config("tiny")
    config.data.source = str(tmp_path / "chat.jsonl")
    config.model.block_size = 72  # a conversation is 68 characters of ChatML
    train_and_evaluate(config, tmp_path / "w")
    val = [r["val_loss"] for r in read_metrics(tmp_path / "w") if "val_loss" in r]
    assert val[-1] < 0.1, val  # over "ddd<|im_end|>" only
    served = Served(model=load(str(tmp_path / "w")), name="tiny")
    right = 0
    for w in words[900:920]:  # val conversations
        body = {"messages": [{"role": "user", "content": w}], "max_tokens": 16, "temperature": 0}
        (choice,) = chat_completions(served, body)["choices"]
        right += choice == {
            "index": 0,
            "message": {"role": "assistant", "content": w[0] * 3},
            "logprobs": None,
            "finish_reason": "stop",
        }
    assert right >= 18, right  # measured: 20 of 20
    # scripts/sample.py --chat: the prompt as a user message, only the answer printed.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [f"--workdir={tmp_path / 'w'}", f"--prompt={words[950]}", "--chat", "--temperature=0"]
    done = subprocess.run(
        [sys.executable, "scripts/sample.py", *args, "--max_new_tokens=16"],
        cwd=pathlib.Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == words[950][0] * 3 + "\n"
