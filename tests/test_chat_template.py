"""A Hugging Face model's own chat template and special tokens (gptjax.hf_tokenizer.read_hf_specials,
gptjax.data.chat with a template): conversations are written, tokenized and trained as transformers'
apply_chat_template writes them, served chats use the template and stop at the model's end tokens, and
export keeps the template."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gptjax.data import DataError, HFTokenizer, chat, tokenizer_from_json
from gptjax.data.from_config import load_data
from gptjax.data.sft import load_sft_dataset
from gptjax.hf_tokenizer import pick_tokenizer, read_hf_specials, save_hf_tokenizer
from gptjax.model import GPT, GPTConfig

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3 Instruct's layout, written here: a header per message, <|eot_id|> after each.
TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('a conversation starts with a user or"
    " system message') }}{% endif %}"
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
    "\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "the weather?"},
    {"role": "assistant", "content": "sunny, warm"},
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """An HF model directory as a Llama 3 Instruct's lays its tokenizer out: tokenizer.json with the
    special tokens, tokenizer_config.json with the template and <|eot_id|> as eos, config.json and
    generation_config.json naming both end tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = tmp_path_factory.mktemp("hf")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello there, the weather is sunny and warm; be brief"] * 20, trainer)
    tok.save(str(directory / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "chat_template": TEMPLATE,
            }
        )
    )
    ends = [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    (directory / "config.json").write_text(
        json.dumps(
            {
                "bos_token_id": ids["<|begin_of_text|>"],
                "eos_token_id": ends[0],
                "vocab_size": tok.get_vocab_size(),
            }
        )
    )
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}))
    return directory


@pytest.fixture(scope="module")
def tok(hf_dir):
    vocab_size = json.loads((hf_dir / "config.json").read_text())["vocab_size"]
    return pick_tokenizer("auto", vocab_size, hf_dir)


def hf_tokenizer(directory):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(directory)


def test_the_directorys_special_tokens_and_template_are_read(hf_dir, tok):
    specials = read_hf_specials(hf_dir)
    assert specials == {
        "eos": "<|eot_id|>",
        "bos": "<|begin_of_text|>",
        "chat_template": TEMPLATE,
        "end_tokens": ("<|end_of_text|>", "<|eot_id|>"),
    }
    assert isinstance(tok, HFTokenizer) and tok.decode([tok.eos_id]) == "<|eot_id|>"
    assert tok.decode([tok.bos_id]) == "<|begin_of_text|>"
    assert tok.end_tokens == ("<|eot_id|>", "<|end_of_text|>")
    again = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))  # as a checkpoint stores it
    assert again.to_json() == tok.to_json() and again.chat_template == TEMPLATE
    old = tokenizer_from_json({"kind": "hf", "tokenizer": tok.to_json()["tokenizer"]})  # saved before
    assert old.chat_template is None and old.eos_token is None  # this BPE has no <|endoftext|>


def test_conversations_are_written_and_tokenized_as_transformers_does(hf_dir, tok):
    hf = hf_tokenizer(hf_dir)
    for messages in (CONVERSATION[:2], CONVERSATION[:4]):
        want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert chat.generation_prompt(messages, tok) == want
        want_ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids  # transformers 5
        assert tok.encode(chat.generation_prompt(messages, tok)) == list(want_ids)
    assert chat.stops(tok) == ["<|eot_id|>", "<|end_of_text|>"]

    pieces = chat.render(CONVERSATION, tok)
    assert "".join(t for t, _ in pieces) == hf.apply_chat_template(CONVERSATION, tokenize=False)
    assert [t for t, trained in pieces if trained] == ["hi<|eot_id|>", "sunny, warm<|eot_id|>"]
    later = chat.render(CONVERSATION, tok, trained_from=3)  # a preference pair's prompt: read only
    assert [t for t, trained in later if trained] == ["sunny, warm<|eot_id|>"]


def test_fine_tuning_rows_train_on_the_answers_of_the_template(tmp_path, tok):
    source = tmp_path / "chat.jsonl"
    source.write_text(
        json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps({"messages": CONVERSATION[:3]})
    )
    rows = load_sft_dataset(str(source), block_size=127, val_fraction=0.5, tokenizer=tok).train
    (row,) = rows
    trained = row[row >= 0]
    assert tok.decode(trained) == "hi<|eot_id|>sunny, warm<|eot_id|>"
    assert row[0] == -tok.bos_id - 1  # the row starts with the template's BOS, read only


def test_template_errors_are_one_line(tok):
    with pytest.raises(DataError, match="refused the conversation: a conversation starts with a user") as e:
        chat.generation_prompt([{"role": "assistant", "content": "hi"}], tok)
    assert "\n" not in str(e.value)
    counting = "{{ messages | length }}:{% for m in messages %}{{ m['content'] }}{% endfor %}"
    shifty = HFTokenizer(tok.to_json()["tokenizer"], "<|eot_id|>", None, counting)
    with pytest.raises(DataError, match="writes the conversation up to message 2 differently once more"):
        chat.render(CONVERSATION, shifty)


def test_a_served_chat_uses_the_template_and_stops_at_the_end_tokens(tok):
    from gptjax.serve import Served
    from gptjax.serve_completions import chat_completions

    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    served = Served(model=(params, cfg, tok, {}), name="tiny")
    out = chat_completions(served, {"messages": CONVERSATION[:2], "max_tokens": 4, "temperature": 0})
    prompt = chat.generation_prompt(CONVERSATION[:2], tok)
    assert out["usage"]["prompt_tokens"] == len(tok.encode(prompt))
    # Greedy decoding of the same prompt, cut at the first end token: what the chat returns.
    from gptjax.sample import complete

    (got,) = complete((params, cfg, tok, {}), [prompt], max_new_tokens=4, do_sample=False)
    text = got.text
    for end in ("<|eot_id|>", "<|end_of_text|>"):
        text = text.split(end)[0]
    assert out["choices"][0]["message"]["content"] == text


def test_export_keeps_the_template_for_apply_chat_template(tmp_path, tok):
    save_hf_tokenizer(tmp_path, tok, model_max_length=96)
    hf = hf_tokenizer(tmp_path)
    want = hf.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert chat.generation_prompt(CONVERSATION[:2], tok) == want
    assert hf.eos_token == "<|eot_id|>" and hf.bos_token == "<|begin_of_text|>"
    assert np.array_equal(hf.encode("hello there", add_special_tokens=False), tok.encode("hello there"))


# Qwen3's layout, written here: ChatML whose answers after the last user message open with an empty
# thinking block, which earlier answers drop once a user message follows them; the answers marked with
# {% generation %} as TRL's training templates mark them.
THINKING = (
    "{% set ns = namespace(last_user=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
    "{% if loop.index0 > ns.last_user %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>"
    "{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_generation_blocks_mark_the_answers_of_a_template_that_rewrites_earlier_turns(tmp_path, hf_dir, tok):
    """A template that writes an earlier answer differently once the conversation goes on cannot be
    trained by rendering it turn by turn (one line says so and how to fix it); with {% generation %}
    blocks its answers are what they write: transformers' assistant mask, token for token."""
    with_template = lambda t: HFTokenizer(tok.to_json()["tokenizer"], "<|im_end|>", None, t)  # noqa: E731
    plain = THINKING.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(DataError, match=r"differently once more follows.*put \{% generation %\}") as e:
        chat.render(CONVERSATION, with_template(plain))
    assert "\n" not in str(e.value)

    marked = with_template(THINKING)
    pieces = chat.render(CONVERSATION, marked)
    assert [t for t, trained in pieces if trained] == [
        "hi<|im_end|>",
        "<think>\n\n</think>\n\nsunny, warm<|im_end|>",
    ]
    later = chat.render(CONVERSATION, marked, trained_from=3)  # a preference pair's prompt: read only
    assert [t for t, trained in later if trained] == ["<think>\n\n</think>\n\nsunny, warm<|im_end|>"]
    assert "".join(t for t, _ in later) == "".join(t for t, _ in pieces)
    assert chat.generation_prompt(CONVERSATION[:2], marked).endswith("<|im_start|>assistant\n")

    directory = tmp_path / "hf"
    directory.mkdir()
    for f in hf_dir.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": THINKING}))
    hf = hf_tokenizer(directory)
    assert "".join(t for t, _ in pieces) == hf.apply_chat_template(CONVERSATION, tokenize=False)
    assert chat.generation_prompt(CONVERSATION[:2], marked) == hf.apply_chat_template(
        CONVERSATION[:2], tokenize=False, add_generation_prompt=True
    )
    out = hf.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    want = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    source = tmp_path / "chat.jsonl"
    source.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps({"messages": CONVERSATION}))
    (row,) = load_sft_dataset(str(source), block_size=255, val_fraction=0.5, tokenizer=marked).train
    assert list(row[row >= 0]) == want

    # config.data.chat_template: the model's template replaced by a file's, for training and the checkpoint.
    (tmp_path / "marked.jinja").write_text(THINKING)
    data = ml_collections.ConfigDict(
        dict(format="prompt_completion", source=str(source), val_fraction=0.5, chat_template="")
    )
    unmarked = with_template(plain)
    with pytest.raises(DataError, match="differently once more follows"):
        load_data(data, unmarked, block_size=255)
    data.chat_template = str(tmp_path / "marked.jinja")
    dataset = load_data(data, unmarked, block_size=255)
    (row,) = dataset.train
    assert list(row[row >= 0]) == want and dataset.tokenizer.to_json()["chat_template"] == THINKING
    assert unmarked.chat_template == plain  # the model's tokenizer itself is left as it was
    with pytest.raises(ValueError, match="replaces an HF model's chat template; this 'char' tokenizer"):
        load_data(data, None, block_size=255)
    data.chat_template = str(tmp_path / "missing.jinja")
    with pytest.raises(FileNotFoundError, match="missing.jinja' is not a file; give a Jinja template file"):
        load_data(data, unmarked, block_size=255)

    broken = with_template(THINKING.replace("{% if m['role'] == 'assistant' %}", "{% if true %}", 1))
    with pytest.raises(DataError, match="writes 5 {% generation %} blocks for 2 assistant messages"):
        chat.render(CONVERSATION, broken)
