"""gptjax: generative pretrained transformers in JAX/Flax."""

from setuptools import find_packages, setup

# Lower bounds are the versions tested on this project's CI machine (Python 3.11, CPU).
setup(
    name="gptjax",
    version="0.1.0",
    description="Generative pretrained transformers (GPT) in JAX/Flax: train, fine-tune, sample.",
    python_requires=">=3.11",
    packages=find_packages(include=["gptjax", "gptjax.*", "configs"]),
    package_data={"gptjax": ["studio.html"]},  # the page scripts/serve.py shows
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml_collections>=1.1.0",
        "absl-py>=2.5.1",
        "numpy>=2.4",
        "tqdm>=4.70",
        "matplotlib>=3.11",
        "tensorboardX>=2.6.5",
        "tiktoken>=0.14",  # GPT-2's BPE (gptjax.data.GPT2Tokenizer)
    ],
    extras_require={
        "test": [
            "pytest>=9.0",
            "pytest-timeout>=2.4.0",  # the per-test timeout (pyproject.toml): a hung test fails the run
            "pytest-xdist>=3.8",  # make test runs the tests in two processes (-n 2)
            "hypothesis>=6.150",
            "ruff>=0.17",
        ],
        "cuda": ["jax[cuda12]>=0.10.2"],
        # Hugging Face GPT-2 import/export (gptjax.convert), LoRA adapters as PEFT files (gptjax.hf_lora),
        # the PyTorch comparison (compare_torch).
        "torch": ["torch==2.13.0", "transformers>=5.23", "safetensors>=0.8", "peft>=0.21.2"],
        # scripts/train_tokenizer.py, gptjax.data.HFTokenizer; jinja2 renders an HF model's chat template
        "tokenizers": ["tokenizers>=0.23", "jinja2>=3.1.6"],
        # Images (gptjax.data.images): the built-in 8x8 digits ship inside scikit-learn; Pillow reads files.
        "art": ["scikit-learn>=1.9.1", "pillow>=12"],
        # Parquet documents (FineWeb's shards) for scripts/prepare_data.py; JSON lines need nothing more.
        "parquet": ["pyarrow>=26"],
        # tfds:NAME image sources, read without TensorFlow (gptjax.data.tfds_images). importlib_resources:
        # TFDS 4.9.10 imports it to prepare a data set (the tests do) but does not declare it
        # (tensorflow/datasets#11212).
        "tfds": ["tensorflow-datasets>=4.9.10", "array_record>=0.8.6", "importlib_resources>=7.1"],
    },
)
