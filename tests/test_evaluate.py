"""text_loss: exact on a uniform model, independent of batching, equal to the training loss on a window;
random_batch_loss: the mean of training-style batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.data import ByteTokenizer, CharTokenizer, GPT2Tokenizer
from gptjax.evaluate import text_loss
from gptjax.model import GPT, GPTConfig, cross_entropy


def model(vocab_size, zero=False):
    cfg = GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    params = GPT(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    if zero:  # every logit 0: the uniform distribution over the vocab
        params = jax.tree_util.tree_map(jnp.zeros_like, params)
    return params, cfg


def test_uniform_model_gives_log_vocab_and_8_bits_per_byte():
    params, cfg = model(256, zero=True)
    text = "héllo, wörld! " * 5
    r = text_loss(params, cfg, ByteTokenizer(), text)
    n_bytes = len(text.encode())
    assert r["tokens"] == n_bytes - 1  # the first byte is context only (no BOS)
    assert r["loss"] == pytest.approx(math.log(256), rel=1e-6)
    assert r["perplexity"] == pytest.approx(256, rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(8, rel=1e-6)
    assert r["bits_per_char"] == pytest.approx(8 * (n_bytes - 1) / (len(text) - 1), rel=1e-6)


def test_a_first_byte_cut_from_a_character_is_the_only_context_byte():
    params, cfg = model(256, zero=True)
    text = "ébcdefghij"  # "é" is two bytes: the first is context, the second is predicted
    r = text_loss(params, cfg, ByteTokenizer(), text)
    assert r["tokens"] == len(text.encode()) - 1 == 10
    assert r["bits_per_byte"] == pytest.approx(8, rel=1e-6)
    assert r["bits_per_char"] == pytest.approx(8 * 10 / len(text), rel=1e-6)  # "é" is partly predicted


def test_a_multibyte_first_character_is_context_with_all_its_bytes():
    """Without BOS the first token is context: a char tokenizer's "é" takes both its bytes out of the
    predicted text."""
    tok = CharTokenizer("éabcdefg")
    params, cfg = model(tok.vocab_size, zero=True)
    text = "ébcdefga"  # 9 bytes, 8 chars: 7 predicted tokens cover 7 bytes and 7 chars
    r = text_loss(params, cfg, tok, text)
    assert r["tokens"] == 7
    assert r["bits_per_byte"] == pytest.approx(math.log2(tok.vocab_size), rel=1e-6)
    assert r["bits_per_char"] == pytest.approx(math.log2(tok.vocab_size), rel=1e-6)


def test_batching_does_not_change_the_result():
    params, cfg = model(256)
    text = "To be, or not to be, that is the question: " * 3  # 129 bytes: 16 windows and a partial one
    one, many = (
        text_loss(params, cfg, ByteTokenizer(), text, 1),
        text_loss(params, cfg, ByteTokenizer(), text, 5),
    )
    assert one["tokens"] == many["tokens"] == 128
    assert one["loss"] == pytest.approx(many["loss"], rel=1e-6)


def test_one_window_equals_the_training_loss():
    tok = CharTokenizer("abcdefgh")
    params, cfg = model(tok.vocab_size)
    text = "abcdhgfea"  # 9 chars: one full window of 8 predictions
    ids = np.array(tok.encode(text), np.int32)[None]
    logits, _ = GPT(cfg).apply({"params": params}, ids[:, :-1])
    r = text_loss(params, cfg, tok, text)
    assert r["loss"] == pytest.approx(float(cross_entropy(logits, ids[:, 1:])), rel=1e-6)
    assert r["bits_per_char"] == pytest.approx(r["loss"] / math.log(2), rel=1e-6)  # one token per char


def test_bos_predicts_the_first_token(data_dir):
    tok = GPT2Tokenizer()
    params, cfg = model(tok.vocab_size, zero=True)
    r = text_loss(params, cfg, tok, "Hello world")
    assert r["tokens"] == 2  # both tokens, the first from <|endoftext|>
    assert r["bits_per_byte"] == pytest.approx(2 * math.log2(tok.vocab_size) / len("Hello world"), rel=1e-6)


@pytest.mark.parametrize("split", ["val", "train"])
def test_random_batch_loss_is_the_mean_of_train_style_batches(split):
    """random_batch_loss = the mean of the per-batch losses training's evaluation computes on the windows
    of the given split's stream, and its groups are the means of consecutive `group` batches."""
    from gptjax.data import get_batch
    from gptjax.evaluate import random_batch_loss

    params, cfg = model(256)
    tokens = np.random.default_rng(0).integers(0, 256, 500).astype(np.uint16)
    r = random_batch_loss(params, cfg, tokens, batch_size=3, batches=6, group=2, split=split, seed=7)
    losses = []
    for step in range(6):
        x_BT, y_BT = get_batch(
            tokens, batch_size=3, block_size=cfg.block_size, seed=7, step=step, split=split
        )
        loss, _ = GPT(cfg).apply({"params": params}, x_BT, targets_BT=y_BT)
        losses.append(float(loss))
    assert r["loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    groups = np.reshape(losses, (3, 2)).mean(axis=1)
    assert r["group_sd"] == pytest.approx(np.std(groups), rel=1e-4, abs=1e-7)
    assert (r["group_min"], r["group_max"]) == pytest.approx((groups.min(), groups.max()), rel=1e-6)
    with pytest.raises(ValueError, match="multiple of group=4"):
        random_batch_loss(params, cfg, tokens, batch_size=3, batches=6, group=4)


# ----- Multiple choice. -----


def direct_logprob(params, cfg, ids, n_choice):
    """The summed log-probability of the last n_choice tokens of `ids`, from one full forward pass."""
    logits_1TV, _ = GPT(cfg).apply({"params": params}, jnp.asarray([ids[:-1]], jnp.int32))
    logp_TV = np.asarray(jax.nn.log_softmax(logits_1TV[0]), np.float64)
    return sum(logp_TV[t - 1, ids[t]] for t in range(len(ids) - n_choice, len(ids)))


def test_choice_logprobs_are_the_models_own_and_long_rows_lose_their_start():
    from gptjax.evaluate import choice_logprobs

    params, cfg = model(256)
    tok = ByteTokenizer()
    choices = [" a", " bcd", " efghij"]
    got = choice_logprobs(params, cfg, tok, "Hi", choices, batch_size=2)  # 3 rows: a padded batch
    want = [direct_logprob(params, cfg, tok.encode("Hi" + c), len(c)) for c in choices]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # 12 + 7 bytes > block_size 8 + 1: the row keeps its last 9 tokens, all 7 of the choice's among them.
    got = choice_logprobs(params, cfg, tok, "a long context", [" efghij"])
    ids = tok.encode("a long context efghij")[-9:]
    np.testing.assert_allclose(got, [direct_logprob(params, cfg, ids, 7)], rtol=1e-5)
    with pytest.raises(ValueError, match="a choice needs 1 to block_size=8"):
        choice_logprobs(params, cfg, tok, "Hi", [" far too long"])


def test_accuracy_follows_the_labels_and_hellaswag_rows_are_read(tmp_path):
    """Labels at the likeliest choice give acc 1, elsewhere 0; acc_norm picks by log-likelihood per
    character of the choice; HellaSwag's rows continue the context after a space."""
    import json

    from gptjax.evaluate import choice_logprobs, multiple_choice, read_choices

    params, cfg = model(256)
    tok = ByteTokenizer()
    rows = [
        {"ctx": "Hi", "endings": ["a", "bcd", "efghij", "kl"], "label": 0},
        {"ctx": "Yo", "endings": ["x", "yy"], "label": "1"},  # some copies write labels as text
    ]
    (tmp_path / "hs.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    examples = read_choices(tmp_path / "hs.jsonl")
    assert examples[0]["choices"] == [" a", " bcd", " efghij", " kl"] and examples[1]["label"] == 1
    best, best_norm = [], []
    for ex in examples:
        logp = choice_logprobs(params, cfg, tok, ex["context"], ex["choices"])
        best.append(int(np.argmax(logp)))
        best_norm.append(int(np.argmax(logp / np.array(ex["chars"]))))  # the endings' lengths
    right = [dict(ex, label=b) for ex, b in zip(examples, best, strict=True)]
    assert multiple_choice(params, cfg, tok, right)["acc"] == 1.0
    wrong = [dict(ex, label=(b + 1) % len(ex["choices"])) for ex, b in zip(examples, best, strict=True)]
    assert multiple_choice(params, cfg, tok, wrong)["acc"] == 0.0
    normed = [dict(ex, label=b) for ex, b in zip(examples, best_norm, strict=True)]
    assert multiple_choice(params, cfg, tok, normed)["acc_norm"] == 1.0


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "is not JSON"),
        ('{"context": "a", "choices": ["b"], "label": 0}', "2 or more text choices"),
        ('{"context": "a", "choices": [" b", ""], "label": 0}', "an empty or non-text choice"),
        ('{"context": "a", "choices": [" b", " c"], "label": 2}', r"label=2 must be the index .* 0-1"),
        ('{"ctx": "a", "endings": [" b", 3], "label": 0}', "HellaSwag's {ctx, endings, label}"),
        ("", "holds no examples"),
    ],
)
def test_bad_choice_files_get_one_line(tmp_path, line, message):
    from gptjax.evaluate import read_choices

    (tmp_path / "x.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as e:
        read_choices(tmp_path / "x.jsonl")
    assert "\n" not in str(e.value)


def test_choices_are_tokenized_and_hellaswag_rendered_as_lm_eval(data_dir, tmp_path):
    """Spaces ending the context go to the choice and context + choice are encoded whole (GPT-2's BPE
    gives " foo" one token, not a space and "foo"); HellaSwag's published rows read as lm-eval's task."""
    import json

    from gptjax.evaluate import choice_logprobs, read_choices

    tok = GPT2Tokenizer()
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    params = GPT(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    ids = tok.encode("Hello world foo")
    assert len(ids) == len(tok.encode("Hello world")) + 1  # " foo" is one token
    got = choice_logprobs(params, cfg, tok, "Hello world ", ["foo"])
    np.testing.assert_allclose(got, [direct_logprob(params, cfg, ids, 1)], rtol=1e-5)

    row = {
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car.",
        "ctx_b": "then",
        "ctx": "unused here",
        "endings": [", the man adds wax to the  windshield.", "Stop. [step] Now."],
        "label": 0,
    }
    (tmp_path / "hs.jsonl").write_text(json.dumps(row))
    (ex,) = read_choices(tmp_path / "hs.jsonl")
    assert ex["context"] == (
        "Removing ice from car: Then, the man writes over the snow covering the window of a car. Then"
    )
    assert ex["choices"] == [" , the man adds wax to the windshield.", " Stop. Now."]
    assert ex["chars"] == [len(c) - 1 for c in ex["choices"]]  # lm-eval's acc_norm: without the space
