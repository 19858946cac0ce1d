"""DPO (gptjax.dpo, gptjax.data.preference, configs/dpo.py): the loss as written in the paper, pairs as
rows, the step's invariants (grad accumulation, pmap), and end to end: a model fine-tuned on two answer
styles learns to prefer the chosen one."""

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpo as dpo_config
from gptjax import dpo, parallel
from gptjax import train_step as train_step_lib
from gptjax.data import CharTokenizer, DataError
from gptjax.data.preference import get_pairs, load_preference_dataset
from gptjax.data.sft import decode_rows
from gptjax.lm_head import head_logits, lm_head_logps, target_logps
from gptjax.metric_writer import read_metrics
from gptjax.model import GPT, GPTConfig
from gptjax.optim import make_optimizer
from gptjax.sample import complete
from gptjax.train import abstract_state, load_params, train_and_evaluate
from gptjax.train_step import (
    Objective,
    answer_logps_steps,
    create_train_state,
    eval_steps,
    train_step,
    train_steps,
)
from tests.test_parallel import close

LN2 = float(np.log(2))


def write_lines(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_the_loss_is_the_papers_and_log_2_at_the_reference():
    rng = np.random.default_rng(0)
    policy, ref = rng.normal(size=8) * 3, rng.normal(size=8) * 3
    for beta, eps in ((0.1, 0.0), (0.5, 0.2)):
        loss, metrics = dpo.dpo_loss(jnp.asarray(policy), jnp.asarray(ref), beta, eps)
        margin = beta * ((policy[0::2] - ref[0::2]) - (policy[1::2] - ref[1::2]))
        log_sigmoid = lambda z: -np.log1p(np.exp(-z))  # noqa: E731
        want = np.mean(-(1 - eps) * log_sigmoid(margin) - eps * log_sigmoid(-margin))
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        assert metrics["reward_accuracy"] == np.mean(margin > 0)
        np.testing.assert_allclose(metrics["reward_margin"], margin.mean(), rtol=1e-5)
    loss, metrics = dpo.dpo_loss(jnp.asarray(policy), jnp.asarray(policy), 0.1)
    np.testing.assert_allclose(loss, LN2, rtol=1e-6)
    assert metrics["reward_margin"] == 0
    logits = (policy[0::2] - ref[0::2]) - (policy[1::2] - ref[1::2])  # TRL's name for the unscaled margin
    for kind, want in (
        ("hinge", np.mean(np.maximum(0, 1 - 0.3 * logits))),
        ("ipo", np.mean((logits - 1 / (2 * 0.3)) ** 2)),
    ):
        loss, metrics = dpo.dpo_loss(jnp.asarray(policy), jnp.asarray(ref), 0.3, loss=kind)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(metrics["reward_margin"], 0.3 * logits.mean(), rtol=1e-5)
    means = -rng.uniform(0.1, 3.0, size=8)  # per-token mean log-probabilities, as ORPO takes them
    odds = means - np.log1p(-np.exp(means))  # TRL's odds_ratio_loss
    want = -0.3 * np.mean(-np.log1p(np.exp(-(odds[0::2] - odds[1::2]))))
    loss, _ = dpo.dpo_loss(jnp.asarray(means), jnp.zeros(8), 0.3, loss="orpo")
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_mean_losses_take_per_token_means_and_rpo_orpo_add_the_chosen_nll():
    """loss_fn: IPO (and ORPO) on the answers' mean log-probability per token, as TRL; rpo_alpha adds alpha
    times the chosen answers' NLL per token (over all chosen tokens of the batch) to the loss, and logs it;
    ORPO adds it with weight 1."""
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)
    state = create_train_state(cfg, make_optimizer(dpo_config.get_config("tiny").opt), 0, Objective("dpo"))
    x, y, ref = (jnp.asarray(a[0]) for a in dpo_batches())
    y = y.at[0, 3:5].set(-1).at[5, 6].set(-1)  # answers of different lengths
    logits, _ = GPT(cfg).apply({"params": state.params}, x)
    sums = np.asarray(target_logps(logits, y))
    tokens = np.asarray(jnp.sum(y >= 0, axis=-1))
    ref_sums = np.asarray(ref[:, 0])

    def loss_of(**objective):
        obj = Objective("dpo", **objective)
        return train_step_lib.loss_fn(state.params, state.apply_fn, (x, y, ref), state.rng, True, obj)

    loss, _ = loss_of(beta=0.2, loss="ipo")
    want, _ = dpo.dpo_loss(jnp.asarray(sums / tokens), jnp.asarray(ref_sums / tokens), 0.2, loss="ipo")
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    summed, _ = dpo.dpo_loss(jnp.asarray(sums), jnp.asarray(ref_sums), 0.2, loss="ipo")
    assert abs(float(summed) - float(want)) > 1e-3  # the means matter

    odds_part, _ = dpo.dpo_loss(jnp.asarray(sums / tokens), jnp.zeros(len(sums)), 0.2, loss="orpo")
    loss, aux = loss_of(beta=0.2, loss="orpo")  # ORPO: its odds ratio term on means plus the chosen NLL
    np.testing.assert_allclose(loss, odds_part + aux["nll_loss"], rtol=1e-5)

    plain, _ = loss_of(beta=0.2)
    loss, aux = loss_of(beta=0.2, rpo_alpha=0.5)
    nll = -sums[0::2].sum() / tokens[0::2].sum()
    np.testing.assert_allclose(aux["nll_loss"], nll, rtol=1e-5)
    np.testing.assert_allclose(loss, plain + 0.5 * nll, rtol=1e-5)


@pytest.mark.parametrize(
    "objective, message",
    [
        (dict(loss="kpo"), "dpo.loss_type='kpo' is unknown"),
        (dict(loss="kto", rpo_alpha=1.0), "dpo.loss_type='kto' takes no rpo_alpha"),
        (dict(loss="kto", undesirable_weight=0.0), "and weights > 0"),
        (dict(rpo_alpha=-1.0), "rpo_alpha=-1.0 >= 0"),
        (dict(loss="orpo", rpo_alpha=1.0), "has its NLL term"),
        (dict(beta=0.0), "dpo.beta=0.0 must be > 0"),
        (dict(loss="hinge", label_smoothing=0.1), "smooths the sigmoid and simpo losses, not 'hinge'"),
    ],
)
def test_bad_objectives_are_one_line(objective, message):
    with pytest.raises(ValueError, match=message):
        Objective("dpo", **objective)


def test_kto_loss_is_the_papers_with_a_kl_estimate_that_gets_no_gradient():
    """KTO (TRL's KTOTrainer): desirable answers cost w_d (1 - sigmoid(beta (r - KL))), undesirable ones
    w_u (1 - sigmoid(beta (KL - r))), KL the mismatched rows' mean log-ratio, clipped at 0, constant."""
    rng = np.random.default_rng(0)
    policy, ref = rng.normal(size=12) * 3, rng.normal(size=12) * 3
    policy[1::2] += 3  # the mismatched rows' mean log-ratio > 0: a KL that the clip keeps
    labels = np.array([1, 0, 1, 1, 0, 0])
    objective = Objective("dpo", beta=0.5, loss="kto", desirable_weight=1.5, undesirable_weight=0.7)

    def loss_of(policy):
        return dpo.pairs_loss(policy, jnp.asarray(ref), jnp.ones(12), objective, jnp.asarray(labels))

    (loss, metrics), grad = jax.value_and_grad(loss_of, has_aux=True)(jnp.asarray(policy))
    r, kl = (policy - ref)[0::2], max((policy - ref)[1::2].mean(), 0.0)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    want = np.where(labels == 1, 1.5 * (1 - sigmoid(0.5 * (r - kl))), 0.7 * (1 - sigmoid(0.5 * (kl - r))))
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["reward_margin"], 0.5 * (r[labels == 1].mean() - r[labels == 0].mean()), rtol=1e-5
    )
    assert not np.asarray(grad)[1::2].any() and np.asarray(grad)[0::2].all()  # KL: no gradient
    assert kl > 0
    policy[1::2] -= 20  # a negative mean: KL clipped to 0
    assert float(loss_of(jnp.asarray(policy))[1]["kl"]) == 0.0


def test_unpaired_examples_pair_with_the_next_completion_of_their_split(tmp_path):
    """KTO's data: each example's row, then its prompt with the next example's completion in its split (the
    last with the first's); the labels beside; get_pairs puts each pair's label at its first row's
    position 1. Bad labels and a loss that does not match the data are one line."""
    examples = [("ab>", "aa", True), ("ba>", "b", False), ("aa>", "ab", True), ("bb>", "ba", False)]
    lines = [{"prompt": p, "completion": c, "label": label} for p, c, label in examples]
    data = load_preference_dataset(
        write_lines(tmp_path / "kto.jsonl", lines), block_size=15, val_fraction=0.5
    )
    assert data.train.shape == (2, 2, 16) and data.val.shape == (2, 2, 16)
    assert list(data.train_labels) == [1, 0] and list(data.val_labels) == [1, 0]
    tok = data.tokenizer

    def prompt_and_answer(row):
        first = int(np.argmax(row >= 0))
        return tok.decode(-row[:first] - 1), tok.decode(row[row >= 0])

    train = [[prompt_and_answer(row) for row in pair] for pair in data.train]
    assert train == [[("ab>", "aa"), ("ab>", "b")], [("ba>", "b"), ("ba>", "aa")]]  # the split wraps
    val = [[prompt_and_answer(row) for row in pair] for pair in data.val]
    assert val == [[("aa>", "ab"), ("aa>", "ba")], [("bb>", "ba"), ("bb>", "ab")]]

    ref = np.column_stack([np.arange(4, dtype=np.float32).reshape(2, 2), data.train_labels])
    _, _, ref_BT = get_pairs(data.train, ref, batch_size=4, block_size=15, seed=0, step=0)
    assert (ref_BT[0::2, 0] % 2 == 0).all() and (ref_BT[0::2, 1] == 1 - ref_BT[0::2, 0] / 2).all()
    assert not ref_BT[1::2, 1].any() and not ref_BT[:, 2:].any()

    said = [
        {"prompt": [user(p)], "completion": [assistant(c)], "label": label} for p, c, label in examples[:2]
    ]
    data = load_preference_dataset(
        write_lines(tmp_path / "chat.jsonl", said), block_size=95, val_fraction=0.5
    )
    chatml = "<|im_start|>user\nab><|im_end|>\n<|im_start|>assistant\n"
    (pair,) = data.train  # one example in train: its own completion is the mismatched one
    assert [data.tokenizer.decode(row[row >= 0]) for row in pair] == ["aa<|im_end|>"] * 2
    assert data.tokenizer.decode(-pair[0][: int(np.argmax(pair[0] >= 0))] - 1) == chatml

    bad = write_lines(tmp_path / "bad.jsonl", [{**lines[0], "label": 1}, lines[1]])
    with pytest.raises(DataError, match=r"bad.jsonl:1: label is 1; write true \(desirable\) or false"):
        load_preference_dataset(bad, block_size=15, val_fraction=0.5)


def test_answer_logps_sum_the_answers_tokens_only():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    y = np.array([[-1, -1, 3, 4, -1], [-1, 0, 6, -1, -1]])
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    want = [logp[0, 2, 3] + logp[0, 3, 4], logp[1, 1, 0] + logp[1, 2, 6]]
    np.testing.assert_allclose(target_logps(logits, jnp.asarray(y)), want, rtol=1e-5)


def test_pairs_become_adjacent_rows_with_the_same_prompt(tmp_path):
    source = write_lines(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "ab>", "chosen": "aa", "rejected": "bbb"},
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "yo"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            },  # fmt: skip
            {"prompt": "ba>", "chosen": "bb", "rejected": "a"},
        ],
    )
    data = load_preference_dataset(source, block_size=95, val_fraction=0.3)
    assert data.train.shape == (2, 2, 96) and data.val.shape == (1, 2, 96)
    tok = data.tokenizer

    def prompt_and_answer(row):  # the values read before the first trained one, and the trained ones
        first = int(np.argmax(row >= 0))
        return tok.decode(-row[:first] - 1), tok.decode(row[row >= 0])

    chosen, rejected = data.train[0]
    assert (prompt_and_answer(chosen), prompt_and_answer(rejected)) == (("ab>", "aa"), ("ab>", "bbb"))
    assert (chosen[:3] == rejected[:3]).all() and (chosen[:3] < 0).all()  # the prompt: read only
    chatml = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert [prompt_and_answer(row) for row in data.train[1]] == [
        (chatml, "yo<|im_end|>"),
        (chatml, "no<|im_end|>"),
    ]

    ref = np.arange(6, dtype=np.float32).reshape(3, 2)
    x, y, ref_BT = get_pairs(data.val, ref[2:], batch_size=2, block_size=95, seed=0, step=0, split="val")
    assert x.shape == (4, 95) and (ref_BT[:, 0] == [4, 5, 4, 5]).all() and not ref_BT[:, 1:].any()
    again = get_pairs(data.val, ref[2:], batch_size=2, block_size=95, seed=0, step=0, split="val")
    assert all((a == b).all() for a, b in zip((x, y, ref_BT), again, strict=True))


@pytest.mark.parametrize(
    "line, message",
    [
        ({"prompt": "a", "chosen": "b"}, r":1: no rejected; every line needs \{\"prompt\""),
        ({"prompt": "a", "chosen": "b", "rejected": ["c"]}, "must be all strings or all lists"),
        (
            {
                "prompt": [{"role": "user", "content": "a"}],
                "chosen": [{"role": "user", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}],
            },  # fmt: skip
            "chosen must hold assistant messages only",
        ),
        ({"prompt": "", "chosen": "b", "rejected": ""}, "an answer gives no token to train on"),
    ],
)
def test_bad_pairs_are_one_line(tmp_path, line, message):
    source = write_lines(tmp_path / "bad.jsonl", [line, {"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(DataError, match=message) as info:
        load_preference_dataset(source, block_size=8, val_fraction=0.5, tokenizer=CharTokenizer("abc"))
    assert "\n" not in str(info.value)


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


PREFERENCE_RECORDS = {  # as Hub datasets hold them, with columns DPO does not use
    "strings": [
        {"prompt": f"{c}>", "chosen": c * 2, "rejected": "b" if c == "a" else "a", "score_chosen": 8.0}
        for c in "abab"
    ],
    "messages": [
        {"prompt": [user(c)], "chosen": [assistant(c * 2)], "rejected": [assistant("c")], "prompt_id": c}
        for c in "abca"
    ],
}


def assert_same_dataset(a, b):
    assert a.tokenizer.to_json() == b.tokenizer.to_json()
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)


@pytest.mark.parametrize("kind", PREFERENCE_RECORDS)
def test_a_parquet_file_gives_the_pairs_of_its_json_lines_twin(tmp_path, kind):
    records = PREFERENCE_RECORDS[kind]
    parquet = write_parquet(tmp_path / "p.parquet", records)
    jsonl = write_lines(tmp_path / "p.jsonl", records)
    a, b = (load_preference_dataset(s, block_size=80, val_fraction=0.25) for s in (parquet, jsonl))
    assert a.train.shape == (3, 2, 81)
    assert_same_dataset(a, b)


def test_an_implicit_prompt_is_what_chosen_and_rejected_begin_with(tmp_path):
    """trl-lib/ultrafeedback_binarized's rows: chosen and rejected each the whole conversation, no prompt."""
    explicit = [
        {
            "prompt": [user("hi"), assistant("yo"), user(c)],
            "chosen": [assistant(c)],
            "rejected": [assistant("no")],
        }
        for c in "abcd"
    ]
    implicit = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"], "score_chosen": 1.0}
        for r in explicit
    ]
    shards = tmp_path / "data"
    shards.mkdir()
    write_parquet(shards / "train-00000-of-00002.parquet", implicit[:3])
    write_parquet(shards / "train-00001-of-00002.parquet", implicit[3:])
    want = load_preference_dataset(
        write_lines(tmp_path / "p.jsonl", explicit), block_size=160, val_fraction=0.5
    )
    for source in (str(shards / "train-*.parquet"), str(shards)):  # val starts inside the first shard
        assert_same_dataset(load_preference_dataset(source, block_size=160, val_fraction=0.5), want)


def test_bad_parquet_pairs_name_the_file_and_row(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": None}]
    source = write_parquet(tmp_path / "p.parquet", rows)
    with pytest.raises(DataError, match=r"p\.parquet:row 2: prompt, chosen and rejected must be all strings"):
        load_preference_dataset(source, block_size=8, val_fraction=0.5)
    same = [{"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("b")]}] * 2
    source = write_parquet(tmp_path / "same.parquet", same)
    with pytest.raises(DataError, match=r"same\.parquet:row 1: chosen: messages must be a non-empty list"):
        load_preference_dataset(source, block_size=8, val_fraction=0.5)
    with pytest.raises(DataError, match=r"^glob .* matches no files; check the pattern$"):
        load_preference_dataset(str(tmp_path / "none-*.parquet"), block_size=8, val_fraction=0.5)


def dpo_batches(K=2, pairs=8, T=8, V=64, seed=0):
    """K steps of `pairs` random pairs of rows (x_KBT, y_KBT, ref_KBT), answers from position 3 on."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, size=(K, 2 * pairs, T)).astype(np.int32)
    y = np.where(np.arange(T) >= 3, rng.integers(0, V, size=(K, 2 * pairs, T)), -1).astype(np.int32)
    ref = np.zeros((K, 2 * pairs, T), np.float32)
    ref[..., 0] = rng.normal(size=(K, 2 * pairs)) * 2 - 15
    return x, y, ref


@pytest.mark.parametrize("mode, loss", [("pmap", "kto"), ("mesh", "sigmoid")])
def test_dpo_steps_on_every_placement_equal_one_device(mode, loss):
    """The DPO step over 8 devices (pmap: a pair per device; mesh: data=2, fsdp=2, tensor=2), its
    evaluation too, all give what one device gives on the same pairs; KTO's under pmap too (its KL
    estimate is the mean over every device's mismatched pairs), and in 2 micro-batches DPO's."""
    config = dpo_config.get_config("tiny")
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=8, n_embd=64)
    objective = Objective("dpo", beta=0.5, loss=loss)
    init, abstract = abstract_state(cfg, config.opt, 0, objective)
    batches = dpo_batches()
    if loss == "kto":  # a reference near the policy (log-ratios ~ N(0, 2): each device's KL mean differs
        params = jax.jit(init)().params  # from the batch's), and labels at each pair's first row
        for k, (x_BT, y_BT) in enumerate(zip(batches[0], batches[1], strict=True)):
            logps_B = target_logps(GPT(cfg).apply({"params": params}, x_BT)[0], jnp.asarray(y_BT))
            batches[2][k, :, 0] = logps_B + np.random.default_rng(k).normal(size=16) * 2
        batches[2][:, 0::2, 1] = np.arange(8) % 3 > 0
    single, single_metrics = jax.jit(train_steps)(jax.jit(init)(), batches)
    want_eval = jax.jit(eval_steps)(single, batches)
    assert set(single_metrics) >= {"loss", *objective.metrics}
    assert set(want_eval) == {"loss", *objective.metrics}
    if loss != "kto":  # KTO's KL estimate is each micro-batch's (as TRL's)
        accumulated, _ = jax.jit(functools.partial(train_steps, grad_accum=2))(jax.jit(init)(), batches)
        close(accumulated.params, single.params, atol=1e-6)

    config.parallel.update(mode=mode, mesh=dict(data=2, fsdp=2, tensor=2))
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state = placement.put_state(jax.jit(init)())
    state, metrics = placement.step_fn(grad_accum=1)(state, placement.put_batch(batches))
    close(placement.get_state(state).params, single.params)
    for k in ("loss", *objective.metrics):
        close(placement.metrics(metrics)[k], single_metrics[k])
    close(placement.eval_fn(1)(placement.put_state(single), placement.put_batch(batches)), want_eval)


@pytest.mark.parametrize(
    "mode, mesh", [("single", None), ("pmap", None), ("mesh", dict(data=1, fsdp=8, tensor=1))]
)
def test_the_reference_on_every_placement_is_the_models_answer_logps(mode, mesh):
    """DPO's reference (dpo.reference_logps through Placement.rows_fn of answer_logps_steps, as training
    computes it): the placed starting model's log-probability of each row's answer, as the model gives it
    on one device; with the parameters sharded over 8 devices (fsdp=8) too, in 2 micro-batches, 11 pairs
    in calls of 8 (the last one padded)."""
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=8, n_embd=64)
    config = dpo_config.get_config("tiny")
    init, abstract = abstract_state(cfg, config.opt, 0, Objective("dpo"))
    state = jax.jit(init)()
    rows_N2R = np.random.default_rng(0).integers(0, 64, size=(11, 2, 9))
    rows_N2R[..., :3] = -rows_N2R[..., :3] - 1  # the prompt: read, not scored
    x_BT, y_BT = decode_rows(rows_N2R.reshape(22, 9))
    logits_BTV, _ = GPT(cfg).apply({"params": state.params}, x_BT)
    want = np.asarray(target_logps(logits_BTV, jnp.asarray(y_BT))).reshape(11, 2)

    config.parallel.update(mode=mode, mesh=mesh or {})
    placement = parallel.make_placement(config.parallel, abstract, 16)
    placed = placement.put_state(state)
    if mode == "mesh":
        kernel = placed.params["h_0"]["mlp"]["fc"]["kernel"]
        assert kernel.addressable_shards[0].data.size == kernel.size // 8  # sharded, not replicated
    fn = placement.rows_fn(functools.partial(answer_logps_steps, grad_accum=2))
    got = dpo.reference_logps(
        lambda xy: fn(placed, placement.put_batch(xy, 16)), rows_N2R, 8, placement.process_rows(16)
    )
    assert got.shape == (11, 2) and (got < 0).all()
    close(got, want)


def test_chunked_row_logps_and_their_gradients_equal_the_full_logits():
    """lm_head_logps (loss_chunk's per-row log-probabilities): each row's sum and the gradients under a
    different cotangent per row (DPO's) equal target_logps of the full logits and autodiff's, with the
    vocabulary padded, ignored targets and a chunk that does not divide T."""
    kx, kh, kt, kg = jax.random.split(jax.random.key(0), 4)
    x_BTD = jax.random.normal(kx, (4, 7, 16))
    head_VD = jax.random.normal(kh, (24, 16)) * 0.3  # 21 ids, 3 pad rows
    t_BT = jax.random.randint(kt, (4, 7), 0, 21).at[0, :3].set(-1).at[2, 5].set(-1)
    g_B = jax.random.normal(kg, (4,))

    def full(x, head):
        return target_logps(head_logits(x, head, 21), t_BT)

    def chunked(x, head):
        return lm_head_logps(x, head, t_BT, 21, 3)

    close(chunked(x_BTD, head_VD), full(x_BTD, head_VD))
    for fn in (full, chunked):
        _, vjp = jax.vjp(fn, x_BTD, head_VD)
        if fn is full:
            want = vjp(g_B)
        else:
            close(vjp(g_B), want)


def test_dpo_with_loss_chunk_trains_as_with_full_logits():
    """model.loss_chunk applies to DPO: a step's loss, metrics and parameters equal the full logits'."""
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16, vocab_multiple=48)
    opt = dpo_config.get_config("tiny").opt
    x, y, ref = (jnp.asarray(a[0]) for a in dpo_batches())
    y = y.at[1, 3:5].set(-1)
    out = []
    for chunk in (0, 3):
        chunked = dataclasses.replace(cfg, loss_chunk=chunk)
        state = create_train_state(chunked, make_optimizer(opt), 0, Objective("dpo", rpo_alpha=0.5))
        out.append(jax.jit(train_step)(state, (x, y, ref.at[:, 0].set(-20.0))))
    (plain, plain_metrics), (chunked, chunked_metrics) = out
    close(chunked_metrics, plain_metrics)
    close(chunked.params, plain.params)


@pytest.mark.parametrize(
    "objective, at_start",
    [
        (Objective("dpo"), LN2),
        (Objective("dpo", beta=0.5, loss="ipo"), 1.0),  # (1 / (2 beta))^2
        (Objective("dpo", loss="hinge"), 1.0),
        (Objective("dpo", rpo_alpha=1.0), None),
        (Objective("dpo", loss="orpo"), None),
    ],
)
def test_against_itself_a_step_prefers_the_chosen_rows(objective, at_start):
    """With the starting model as reference every margin is 0: the sigmoid loss is ln 2, IPO's
    1 / (2 beta)^2, the hinge's 1; one step of each loss (RPO's too) moves every pair toward its chosen
    answer."""
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)
    state = create_train_state(cfg, make_optimizer(dpo_config.get_config("tiny").opt), 0, objective)
    x, y, _ = (jnp.asarray(a[0]) for a in dpo_batches())
    logits, _ = GPT(cfg).apply({"params": state.params}, x)
    ref = jnp.zeros(x.shape).at[:, 0].set(target_logps(logits, y))
    moved, metrics = jax.jit(train_step)(state, (x, y, ref))
    if at_start is not None:
        np.testing.assert_allclose(metrics["loss"], at_start, rtol=1e-6)
    after, _ = GPT(cfg).apply({"params": moved.params}, x)
    delta = np.asarray(target_logps(after, y) - ref[:, 0]).reshape(-1, 2)
    assert (delta[:, 0] > delta[:, 1]).all(), delta  # chosen up relative to rejected, every pair


def assert_resumes_exactly(config, workdir, at: int, capsys) -> None:
    """A copy of `workdir` without its last checkpoint (config.max_iters), as if killed after step `at`,
    resumes there and ends with the uninterrupted run's parameters."""
    resumed = workdir.parent / f"{workdir.name}_resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(config.max_iters))
    capsys.readouterr()
    train_and_evaluate(config, resumed)
    assert f"/{resumed.name}/checkpoints at step {at}" in capsys.readouterr().out
    whole, _, _, _ = load_params(workdir)
    again, _, _, _ = load_params(resumed)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def style_pairs(n: int, seed: int = 0):
    """Prompts of 4 letters a-h and ">"; two answer styles: the first letter three times (chosen) or the
    last one (rejected)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefgh"), size=4)) for _ in range(n)]
    return [(w + ">", w[0] * 3 + ".", w[-1] * 3 + ".") for w in words]


@pytest.mark.slow
def test_dpo_teaches_a_fine_tuned_model_the_chosen_style_and_resumes_exactly(
    sft_policy, tmp_path, tmp_cache, capsys
):
    """configs/sft.py:tiny learns both styles (conftest's sft_policy: each prompt answered one way or the
    other at random), so greedy decoding answers about half the prompts in each; DPO from it on pairs
    (first-letter answer chosen) makes the chosen style the answer. The run starts at ln 2, logs reward
    accuracy, saves the reference, and a resumed run ends with the uninterrupted run's parameters."""
    pairs, policy_dir, _ = sft_policy  # shared with other tests: only read here
    val = pairs[900:]
    prompts = [p for p, _, _ in val[:50]]

    def chosen_share(workdir):
        got = complete(workdir, prompts, max_new_tokens=4, do_sample=False)
        return np.mean([g.text == c for g, (_, c, _) in zip(got, val, strict=False)])

    before = chosen_share(policy_dir)
    assert 0.2 < before < 0.8, before  # both styles learned

    lines = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]
    config = dpo_config.get_config("tiny")
    config.update(init_from=str(policy_dir))
    config.data.source = write_lines(tmp_path / "pairs.jsonl", lines)
    summary = train_and_evaluate(config, tmp_path / "dpo")
    records = read_metrics(tmp_path / "dpo")
    first_val = next(r["val_loss"] for r in records if "val_loss" in r)
    assert first_val == pytest.approx(LN2, abs=1e-5)  # the policy is the reference
    accuracy = [r["reward_accuracy"] for r in records if "reward_accuracy" in r]
    val_accuracy = [r["val_reward_accuracy"] for r in records if "val_reward_accuracy" in r]
    assert val_accuracy[0] == 0  # no margin yet: no pair's chosen reward is larger
    assert summary["val_loss"] < 0.3 and accuracy[-1] > 0.9 and val_accuracy[-1] > 0.75, (
        summary,
        accuracy,
        val_accuracy,
    )
    after = chosen_share(tmp_path / "dpo")
    assert after > 0.9, (before, after)
    assert (tmp_path / "dpo" / dpo.REFERENCE_FILE).is_file()
    args = [f"--workdir={tmp_path / 'dpo'}", "--random_batches=2", "--split=val"]
    done = subprocess.run(
        [sys.executable, "scripts/eval.py", *args],
        cwd=pathlib.Path(__file__).resolve().parents[1],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "--random_batches does not score" in done.stderr, done.stderr[-2000:]

    # Interrupted at step 50 (its checkpoint, the next one gone), resumed (the reference read back): the
    # same parameters.
    assert_resumes_exactly(config, tmp_path / "dpo", 50, capsys)

    # KTO from the same model on the pairs unpaired (chosen answers desirable, rejected ones not), each
    # split shuffled so that an example's mismatched completion is another prompt's.
    unpaired = [
        [
            {"prompt": p, "completion": a, "label": good}
            for p, c, r in part
            for a, good in ((c, True), (r, False))
        ]
        for part in (pairs[:900], pairs[900:])
    ]
    rng = np.random.default_rng(1)
    lines = [line for part in unpaired for line in rng.permutation(part).tolist()]
    config.data.source = write_lines(tmp_path / "kto.jsonl", lines)
    config.dpo.loss_type = "kto"
    train_and_evaluate(config, tmp_path / "kto")
    records = read_metrics(tmp_path / "kto")
    margins = [r["val_reward_margin"] for r in records if "val_reward_margin" in r]
    assert margins[0] == 0 and margins[-1] > 0 and all("kl" in r for r in records if "train_loss" in r)
    assert chosen_share(tmp_path / "kto") > 0.9, (before, margins)


def scratch_config(source: str):
    """configs/dpo.py:tiny from scratch: char tokens, the model fields init_from would fill set to
    GPTConfig's defaults but small."""
    config = dpo_config.get_config("tiny")
    config.data.source = source
    config.data.tokenizer = "char"
    for field, value in config.model.items():
        if value is None:
            config.model[field] = GPTConfig.__dataclass_fields__[field].default
    config.model.update(n_layer=1, n_head=2, n_embd=32)
    return config


def test_dpo_needs_a_starting_model(tmp_path):
    config = scratch_config(
        write_lines(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 4)
    )
    config.dpo.loss_type = "kto"
    with pytest.raises(ValueError, match="'kto' learns from unpaired examples .* to kto or another to match"):
        train_and_evaluate(config, tmp_path / "kto")
    config.dpo.loss_type = "sigmoid"
    with pytest.raises(ValueError, match="DPO .* fine-tunes a trained model, its own reference: set"):
        train_and_evaluate(config, tmp_path / "w")


def test_simpo_has_no_reference_and_its_loss_is_the_papers():
    """SimPO: -log sigmoid(beta * (mean log pi(chosen) - mean log pi(rejected)) - gamma), per-token means,
    whatever reference the batch carries."""
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)
    objective = Objective("dpo", beta=2.0, loss="simpo", simpo_gamma=0.7)
    assert not objective.reference and Objective("dpo").reference
    state = create_train_state(cfg, make_optimizer(dpo_config.get_config("tiny").opt), 0, objective)
    x, y, ref = (jnp.asarray(a[0]) for a in dpo_batches())
    y = y.at[0, 3:5].set(-1)
    logits, _ = GPT(cfg).apply({"params": state.params}, x)
    means = np.asarray(target_logps(logits, y)) / np.asarray(jnp.sum(y >= 0, axis=-1))
    z = 2.0 * (means[0::2] - means[1::2]) - 0.7
    want = np.mean(np.log1p(np.exp(-z)))
    for refs in (ref, jnp.zeros_like(ref)):
        loss, _ = train_step_lib.loss_fn(
            state.params, state.apply_fn, (x, y, refs), state.rng, True, objective
        )
        np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_simpo_trains_from_scratch_without_a_reference_file(tmp_path):
    """SimPO needs no starting model: configs/dpo.py:tiny with loss_type=simpo trains a fresh model on
    pairs (the chosen answer's reward grows past the rejected one's), and writes no reference file."""
    config = scratch_config(
        write_lines(
            tmp_path / "p.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in style_pairs(200)]
        )
    )
    config.dpo.update(loss_type="simpo", beta=2.0)
    config.update(max_iters=40, eval_interval=20, checkpoint_interval=20)
    config.opt.lr = 3e-3  # a fresh model: faster than the fine-tuning default
    train_and_evaluate(config, tmp_path / "w")
    records = read_metrics(tmp_path / "w")
    val = [(r["val_loss"], r["val_reward_accuracy"]) for r in records if "val_reward_accuracy" in r]
    assert val[-1][0] < 0.5 * val[0][0] and val[-1][1] > 0.7, val  # 1.02 -> 0.36, 0.30 -> 0.88 here
    assert not (tmp_path / "w" / dpo.REFERENCE_FILE).exists()
