"""iGPT's linear probe: how much of an image's class a model trained without labels has learned.

Each image runs through the model; the residual stream after `layer` blocks (0: the embeddings) is
normalised per position (a layer norm without scale or bias) and averaged over positions, as iGPT's
features; a logistic regression fitted on the train split's features is scored on the val split. iGPT
found the best features in the middle layers. Only unconditional models: a class start token would
give the answer away.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, GPTConfig, unstack_layers


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _pooled(params: Any, cfg: GPTConfig, x_BT: jax.Array, layer: int) -> jax.Array:
    """(B, D) float32: the normalised stream after `layer` blocks, averaged over positions."""
    name = "Dropout_0" if layer == 0 else f"h_{layer - 1}"  # the embeddings' dropout passes them on
    _, state = GPT(cfg).apply(
        {"params": params}, x_BT, capture_intermediates=lambda m, _: m.name == name, mutable="intermediates"
    )
    out = state["intermediates"][name]["__call__"][0]
    x_BTD = (out[0] if isinstance(out, tuple) else out).astype(jnp.float32)  # a block returns (x, cache)
    mean = x_BTD.mean(-1, keepdims=True)
    normed_BTD = (x_BTD - mean) * jax.lax.rsqrt(x_BTD.var(-1, keepdims=True) + 1e-5)
    return normed_BTD.mean(1)


def features(
    params: Any, cfg: GPTConfig, rows_NL: np.ndarray, layer: int, batch_size: int = 64
) -> np.ndarray:
    """iGPT's features (N, D) of image rows (a start token, then the pixels) after `layer` blocks."""
    if not 0 <= layer <= cfg.n_layer:
        raise ValueError(f"layer={layer} must be in [0, {cfg.n_layer}] (0: the embeddings)")
    if cfg.scan_layers:  # per-layer params, so that each block's output can be captured
        params, cfg = unstack_layers(params), dataclasses.replace(cfg, scan_layers=False)
    x_NT = np.asarray(rows_NL, np.int32)[:, :-1]  # the model's input: every pixel but the last
    pad = -len(x_NT) % batch_size  # whole batches: one compiled shape
    x_NT = np.concatenate([x_NT, np.zeros((pad, x_NT.shape[1]), np.int32)])
    out = [
        np.asarray(_pooled(params, cfg, x_NT[i : i + batch_size], layer))
        for i in range(0, len(x_NT), batch_size)
    ]
    return np.concatenate(out)[: len(rows_NL)]


def linear_probe(train_X: np.ndarray, train_y: np.ndarray, val_X: np.ndarray, val_y: np.ndarray) -> dict:
    """{train_accuracy, val_accuracy} of a logistic regression on standardised features (scikit-learn)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("the linear probe needs scikit-learn: pip install -e '.[art]'") from None
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(train_X, train_y)
    return {
        "train_accuracy": float(classifier.score(train_X, train_y)),
        "val_accuracy": float(classifier.score(val_X, val_y)),
    }


def probe(model: tuple, dataset: Any, layers: list[int] | None = None, batch_size: int = 64) -> list[dict]:
    """A linear probe per layer (default every one, 0..n_layer) of `model` = (params, GPTConfig, tokenizer)
    on `dataset`, an image Dataset with labels (gptjax.data.from_config.load_data of its config.data)."""
    params, cfg, tok = model[:3]
    if getattr(tok, "kind", None) != "palette":
        raise ValueError("the linear probe is for image models (data.tokenizer='palette')")
    if tok.classes:
        raise ValueError(
            "this model starts each image with its class token, which gives the class away; probe a model "
            "trained with data.class_conditional=False"
        )
    if dataset.train_labels is None:
        raise ValueError("the model's images have no labels to probe for (class folders, .npz labels)")
    results = []
    for layer in range(cfg.n_layer + 1) if layers is None else layers:
        train_X = features(params, cfg, dataset.train, layer, batch_size)
        val_X = features(params, cfg, dataset.val, layer, batch_size)
        scores = linear_probe(train_X, dataset.train_labels, val_X, dataset.val_labels)
        results.append({"layer": layer, **scores})
    return results
