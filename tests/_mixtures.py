"""The exact-score test problems shared by the sampler tests: the 2-D ring, a 16-D four-component mixture, and
their ground truth (a data sample and the RMS energy distance between two independent data draws, the sampling
noise of one energy distance), computed once per test session."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax.eval.sample_distances import energy_distance

N_POINTS = 2000
RING = dj.ring_mixture()
MIX16 = dj.gaussian_mixture(jnp.array([1.0, 2.0, 1.0, 3.0]),
                            2.0 * jax.random.normal(jax.random.key(5), (4, 16)),
                            jnp.array([0.5, 0.3, 0.8, 0.4])[:, None] * jnp.ones((4, 16)))
DATASETS = {"ring": RING, "mix16": MIX16}


@functools.lru_cache(maxsize=None)
def data_and_noise(name: str):
    """``(data sample, rms)``: ``N_POINTS`` data points and the RMS of 8 data-vs-data energy distances."""
    mix = DATASETS[name]
    eds = [float(energy_distance(mix.sample(jax.random.key(100 + 2 * i), N_POINTS),
                                 mix.sample(jax.random.key(101 + 2 * i), N_POINTS))) for i in range(8)]
    return mix.sample(jax.random.key(1), N_POINTS), float(np.sqrt(np.mean(np.square(eds))))
