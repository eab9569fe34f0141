from setuptools import find_packages, setup

setup(
    name="diffjax",
    version="0.1.0",
    description="Score-based diffusion models in JAX/Flax: DDPM and NCSN as special cases of one continuous-time core.",
    packages=find_packages(include=["diffjax", "diffjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml_collections>=1.0",
        "chex>=0.1.89",
        "diffrax>=0.7",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "pillow>=10.0",
    ],
    extras_require={
        # reading prepared ArrayRecord datasets needs tensorflow-datasets and array_record only; TensorFlow is for
        # preparing them (`tfds build`)
        "tfds": ["tensorflow-datasets>=4.9.10", "array_record>=0.8", "tensorflow-cpu>=2.16",
                 "importlib_resources>=6.0"],
        # the damaged-shard tests write real TFDS shards (tests/test_data_tfds.py)
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "nbformat>=5.9", "tensorflow-datasets>=4.9.10",
                 "array_record>=0.8"],
    },
)
