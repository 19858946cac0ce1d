"""gptjax: generative pretrained transformers in JAX/Flax."""


def __getattr__(name):
    # gptjax.generate without importing JAX on `import gptjax` (the data pipeline is numpy only).
    if name == "generate":
        from gptjax.sample import generate

        return generate
    raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
