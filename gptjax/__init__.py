"""gptjax: generative pretrained transformers in JAX/Flax."""
