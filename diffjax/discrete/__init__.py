"""DDPM and NCSN as special cases of the core (VP / VE SDE + a discrete grid + their classic update)."""
from diffjax.discrete import ddpm, ncsn
from diffjax.discrete.ddpm import *  # noqa: F401,F403
from diffjax.discrete.ncsn import *  # noqa: F401,F403

__all__ = ["ddpm", "ncsn"] + ddpm.__all__ + ncsn.__all__
