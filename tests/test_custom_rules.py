"""Rules of the user's own (HF's logits_processor): functions and flax.struct dataclasses, in sampling, greedy
decoding and beam search, at their place in HF's order, and new values of a rule's arrays without a new
compilation."""

import jax.numpy as jnp
import pytest
from flax import struct

import gptjax
from gptjax import decode, sample
from gptjax.data import CharTokenizer
from gptjax.sample import GenerateOptions

pytestmark = pytest.mark.usefixtures("strict_ranks")

PROMPTS = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]


@pytest.fixture(scope="module")
def params(tiny_params):
    return tiny_params


def no_odd_tokens(logits_BV, history):
    return jnp.where(jnp.arange(logits_BV.shape[-1]) % 2 == 1, -jnp.inf, logits_BV)


@struct.dataclass
class Boost:
    """Adds `amount` to one token's logit (an array field: new amounts reuse the compiled loop)."""

    amount: jnp.ndarray
    token: int = struct.field(pytree_node=False)

    def __call__(self, logits_BV, history):
        return logits_BV.at[:, self.token].add(self.amount)


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=2.0, num_return_sequences=2),
        dict(temperature=0),
        dict(num_beams=3, num_return_sequences=2),
    ],
)
def test_a_function_rule_holds_in_every_mode(tiny_cfg, params, options):
    options = GenerateOptions(max_new_tokens=10, seed=1, **options)
    plain = sample.generate_ids(params, tiny_cfg, PROMPTS, options)
    even = sample.generate_ids(params, tiny_cfg, PROMPTS, options, logits_processor=[no_odd_tokens])
    assert any(t % 2 == 1 for seqs in plain for s in seqs for t in s.tolist())  # the rule has work to do
    assert all(t % 2 == 0 for seqs in even for s in seqs for t in s.tolist())
    assert [len(seqs) for seqs in even] == [options.num_return_sequences] * 3


def test_a_dataclass_rules_arrays_change_without_compiling_again(tiny_cfg, params):
    options = GenerateOptions(max_new_tokens=6, temperature=0)
    run = lambda amount: sample.generate_ids(  # noqa: E731
        params, tiny_cfg, PROMPTS, options, logits_processor=[Boost(jnp.float32(amount), 11)]
    )
    run(0.0)
    compiled = decode.run._cache_size()
    forced = run(1e4)
    assert [s[0].tolist() for s in forced] == [[11] * 6] * 3
    assert decode.run._cache_size() == compiled
    plain = sample.generate_ids(params, tiny_cfg, PROMPTS, options)
    assert [s[0].tolist() for s in run(0.0)] == [s[0].tolist() for s in plain] != [[11] * 6] * 3


def test_custom_rules_come_after_the_bans_and_before_temperature():
    options = GenerateOptions(suppress_tokens=[3], repetition_penalty=1.3, temperature=0.5, top_k=4)
    names = [type(r).__name__ for r in options.rules(custom=[no_odd_tokens, Boost(jnp.float32(1), 2)])]
    assert names == ["RepetitionPenalty", "Suppress", "Custom", "Boost", "Temperature", "TopK"]


def test_text_generation_takes_rules_too(tiny_cfg, params):
    """Through gptjax.generate: a rule that leaves only the tokens of 'k' and 'p' writes only those."""
    model = (params, tiny_cfg, CharTokenizer("abcdefghijklmnop"))
    allowed = jnp.asarray([model[2].encode(c)[0] for c in "kp"])

    def only_k_and_p(logits_BV, history):
        return jnp.where(jnp.isin(jnp.arange(logits_BV.shape[-1]), allowed), logits_BV, -jnp.inf)

    (text,) = gptjax.generate(model, "abc", max_new_tokens=8, logits_processor=[only_k_and_p], seed=2)
    assert text.startswith("abc") and set(text[3:]) <= set("kp") and len(text) == 11


@pytest.mark.parametrize("rule", [5, "top_k", None])
def test_a_rule_that_is_not_callable_gives_one_line(tiny_cfg, params, rule):
    with pytest.raises(ValueError, match="must be a function \\(logits_BV, history\\) -> logits_BV") as e:
        sample.generate_ids(params, tiny_cfg, [[1]], GenerateOptions(), logits_processor=[rule])
    assert "\n" not in str(e.value)


def test_rules_see_the_history(tiny_cfg, params):
    """A rule reading History: forbid repeating the newest token (a 1-token no-repeat), greedy."""

    def no_immediate_repeat(logits_BV, history):
        newest_B1 = jnp.take(history.tokens_BL, history.cur, axis=1)[:, None]
        return jnp.where(jnp.arange(logits_BV.shape[-1])[None, :] == newest_B1, -jnp.inf, logits_BV)

    options = GenerateOptions(max_new_tokens=12, temperature=0)
    repeats = lambda prompt, s: sum(a == b for a, b in zip([prompt[-1], *s], s, strict=False))  # noqa: E731
    plain = sample.generate_ids(params, tiny_cfg, PROMPTS, options)
    assert sum(repeats(p, s.tolist()) for p, (s,) in zip(PROMPTS, plain, strict=True)) > 0
    out = sample.generate_ids(params, tiny_cfg, PROMPTS, options, logits_processor=[no_immediate_repeat])
    assert all(repeats(p, s.tolist()) == 0 and len(s) == 12 for p, (s,) in zip(PROMPTS, out, strict=True))
