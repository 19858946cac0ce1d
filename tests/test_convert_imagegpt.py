"""HF ImageGPT <-> gptjax: logits and loss equal PyTorch's (the head never predicts the start token),
export -> import is exact, the palette comes from preprocessor_config.json and encodes as HF's image
processor, and a converted model draws images and fine-tunes on new ones."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import digits
from gptjax import convert, evaluate, image
from gptjax.data import DataError, PaletteTokenizer, load_images
from gptjax.model import GPT, GPTConfig
from gptjax.train import load_params, train_and_evaluate

pytestmark = pytest.mark.usefixtures("tmp_cache")

SIDE, COLORS = 4, 8  # 4x4 RGB images, 8 colours: vocab 9 (the start token is id 8)
SHAPE = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=COLORS + 1, n_positions=SIDE * SIDE)


@pytest.fixture(scope="module")
def torch():
    import torch  # the torch extra, which make test installs: missing fails, never skips

    return torch


def clusters(seed=0):
    """COLORS RGB clusters in [-1, 1], between 8-bit colours as iGPT's are."""
    return np.random.default_rng(seed).uniform(-1, 1, (COLORS, 3))


def make_imagegpt(torch, directory, seed=0):
    """A random HF ImageGPTForCausalImageModeling (every weight random, norm scales around 1) saved in
    `directory` with an ImageGPTImageProcessor holding `clusters()`."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(**SHAPE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "ln" in name else 0.0) + 0.1 * torch.randn_like(p))
    model.eval().save_pretrained(directory)
    processor = transformers.ImageGPTImageProcessor(
        clusters=clusters(), size={"height": SIDE, "width": SIDE}, do_resize=False
    )
    processor.save_pretrained(directory)
    return model, processor


def rows(n=6, seed=1):
    """n token rows: the start token, then SIDE*SIDE random colour ids."""
    pixels = np.random.default_rng(seed).integers(0, COLORS, (n, SIDE * SIDE))
    return np.concatenate([np.full((n, 1), COLORS), pixels], 1).astype(np.int32)


def hf_outputs(torch, model, rows_NL):
    """HF's logits over the pixels given the start token and the pixels before each, and their mean
    negative log-likelihood in nats (as the loss HF computes with labels=ids, over every pixel)."""
    with torch.no_grad():
        inputs = torch.as_tensor(rows_NL[:, :-1], dtype=torch.long)
        logits = model(inputs).logits
        targets = torch.as_tensor(rows_NL[:, 1:], dtype=torch.long)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return logits.numpy(), float(loss)


def test_logits_and_loss_match_pytorch(torch, tmp_path):
    model, _ = make_imagegpt(torch, tmp_path / "hf")
    params, cfg = convert.load_hf(tmp_path / "hf")
    assert (cfg.norm, cfg.gelu, cfg.tie_embeddings, cfg.output_vocab) == ("rms", "quick", False, COLORS)
    x = rows()
    hf_logits, hf_loss = hf_outputs(torch, model, x)
    logits = np.asarray(GPT(cfg).apply({"params": params}, x[:, :-1])[0])
    assert hf_logits.shape[-1] == COLORS and logits.shape[-1] == COLORS + 1
    np.testing.assert_allclose(logits[..., :COLORS], hf_logits, atol=2e-5, rtol=1e-5)
    assert np.all(logits[..., COLORS] < -1e9)  # the start token: probability 0, as HF's missing row
    # HF's loss: the mean over every predicted pixel, as gptjax's exact image loss.
    ours = evaluate.image_loss(params, cfg, x)["loss"]
    assert ours == pytest.approx(hf_loss, rel=1e-5)


def test_export_import_is_exact_and_transformers_loads_it(torch, tmp_path):
    import transformers

    make_imagegpt(torch, tmp_path / "hf")
    convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w")
    convert.workdir_to_hf(tmp_path / "w", tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["model_type"] == "imagegpt" and exported["activation_function"] == "quick_gelu"
    for name, want in convert.read_hf_weights(tmp_path / "hf").items():
        np.testing.assert_array_equal(convert.read_hf_weights(tmp_path / "out")[name], want, err_msg=name)
    model = transformers.ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "out").eval()
    original = transformers.ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_array_equal(hf_outputs(torch, model, rows())[0], hf_outputs(torch, original, rows())[0])
    processor = transformers.ImageGPTImageProcessor.from_pretrained(tmp_path / "out")
    np.testing.assert_allclose(np.asarray(processor.clusters), clusters(), atol=1e-6)


def test_palette_encodes_as_the_hf_image_processor(torch, tmp_path):
    """The checkpoint's tokenizer holds the processor's clusters as pixel values; images encode to the same
    ids and a converted model draws whole images in those colours."""
    _, processor = make_imagegpt(torch, tmp_path / "hf")
    convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w")
    _, cfg, tok, config = load_params(tmp_path / "w")
    assert isinstance(tok, PaletteTokenizer)
    assert (tok.height, tok.width, tok.num_colors) == (SIDE, SIDE, COLORS)
    np.testing.assert_allclose(tok.centers_KC, (clusters() + 1) * 127.5, rtol=1e-6)
    assert (config.data.tokenizer, config.data.image_size, config.data.colors) == ("palette", SIDE, COLORS)

    images = np.random.default_rng(2).integers(0, 256, (200, SIDE, SIDE, 3), dtype=np.uint8)  # 3,200 pixels
    hf_ids = processor(list(images), input_data_format="channels_last", return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(tok.encode_images(images), hf_ids)

    drawn = image.draw(str(tmp_path / "w"), num_samples=3, seed=0)
    assert drawn.shape == (1, 3, SIDE, SIDE, 3)
    colours = {tuple(c) for c in tok.palette_KC.tolist()}
    assert {tuple(p) for p in drawn.reshape(-1, 3).tolist()} <= colours


def test_finetuning_from_an_imagegpt_directory_starts_from_its_weights(torch, tmp_path):
    """init_from=<HF ImageGPT dir> with an image config: the palette is the model's (new images are
    encoded with it), step 0 holds exactly the HF weights, and training goes on from there."""
    make_imagegpt(torch, tmp_path / "hf")
    pixels = np.random.default_rng(3).integers(0, 256, (40, SIDE, SIDE, 3), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images=pixels)
    config = digits.get_config("uncond")
    config.data.update(source=str(tmp_path / "images.npz"), image_size=SIDE, channels=3, colors=COLORS)
    config.model.update(
        block_size=SIDE * SIDE, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True, gelu="quick",
        norm="rms", output_vocab=COLORS, tie_embeddings=False,
    )  # fmt: skip
    config.update(init_from=str(tmp_path / "hf"), batch_size=8, max_iters=0, eval_iters=1)
    config.parallel.mode = (
        "single"  # its params stay the host arrays init_params gives: samples.png read them
    )
    train_and_evaluate(config, tmp_path / "ft")
    assert (tmp_path / "ft" / "samples.png").is_file()
    params, cfg, tok, _ = load_params(tmp_path / "ft")
    assert cfg.norm == "rms" and cfg.output_vocab == COLORS
    np.testing.assert_allclose(tok.centers_KC, (clusters() + 1) * 127.5, rtol=1e-6)
    for name, want in convert.read_hf_weights(tmp_path / "hf").items():
        np.testing.assert_array_equal(convert.params_to_hf(params, cfg)[name], want, err_msg=name)

    config.model.norm = "layer"  # the same shapes would load: the error names the field and the fix
    with pytest.raises(ValueError, match=r"norm=layer \(HF: rms\); set --config.model.norm=rms$"):
        train_and_evaluate(config, tmp_path / "ft2")


def test_errors_are_one_line():
    base = dict(model_type="imagegpt", vocab_size=9, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="tie_word_embeddings=True is not supported; gptjax needs False"):
        convert.config_from_hf({**base, "tie_word_embeddings": True})
    with pytest.raises(
        ValueError,
        match="model_type='falcon' is not supported; gptjax converts gpt2, imagegpt, llama, mistral",
    ):
        convert.config_from_hf({**base, "model_type": "falcon"})
    cfg = GPTConfig(vocab_size=9, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="rms")
    with pytest.raises(ValueError, match="exports as HF ImageGPT, whose head is untied"):
        convert.hf_config(cfg)
    with pytest.raises(ValueError, match="cannot be exported as GPT-2"):
        convert.hf_config(GPTConfig(vocab_size=9, output_vocab=8))
    with pytest.raises(ValueError, match=r"output_vocab=10 must be in \[0, vocab_size=9\]"):
        GPTConfig(vocab_size=9, output_vocab=10)
    with pytest.raises(ValueError, match="norm='batch' is unknown"):
        GPTConfig(vocab_size=9, norm="batch")


def test_cifar10_imagegpt_config_is_openais_igpt_small():
    """configs/cifar10.py:imagegpt fits openai/imagegpt-small, whose config is ImageGPTConfig's defaults."""
    import transformers

    from configs import cifar10
    from gptjax.train import model_config

    hf = convert.config_from_hf(transformers.ImageGPTConfig().to_dict())
    config = cifar10.get_config("imagegpt")
    convert.check_same_model(hf, model_config(config, hf.vocab_size))  # raises naming any difference
    assert config.data.image_size**2 == hf.block_size and config.data.colors == hf.vocab_size - 1
    assert not config.data.class_conditional and config.init_from == "openai/imagegpt-small"


def test_scripts_take_source_images_for_a_converted_model(torch, tmp_path):
    """A converted model names no training images: sample_images.py --complete, eval.py and probe.py take
    --source's (resized to its size), say so in one line without it, and an empty source is never read
    as the working directory."""
    make_imagegpt(torch, tmp_path / "hf")
    convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w")
    np.savez(tmp_path / "mine.npz", images=np.random.default_rng(4).integers(0, 256, (3, 9, 9, 3), np.uint8))
    scripts = pathlib.Path(__file__).parents[1] / "scripts"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    run = lambda script, *flags: subprocess.run(  # noqa: E731
        [sys.executable, scripts / script, f"--workdir={tmp_path / 'w'}", *flags],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    source = f"--source={tmp_path / 'mine.npz'}"
    out = run("sample_images.py", "--complete=2", source, "--num_samples=2", f"--out={tmp_path / 'c.png'}")
    assert out.returncode == 0 and "2 --source images" in out.stdout, out.stderr[-2000:]
    assert (tmp_path / "c.png").is_file()
    out = run("eval.py", source)
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["images"] == 3, out.stderr[-2000:]
    for script, flags in [("sample_images.py", ["--complete=2"]), ("eval.py", []), ("probe.py", [])]:
        out = run(script, *flags)
        assert out.returncode == 1 and out.stderr.strip().endswith("pass --source=<images>"), out.stderr
    with pytest.raises(DataError, match="the image source is empty; set --config.data.source"):
        load_images("", SIDE, 3)
