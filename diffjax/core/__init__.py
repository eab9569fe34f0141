"""The continuous-time core: pure math on jax arrays (never imports flax, optax, orbax or tensorflow)."""
from diffjax.core.contracts import *  # noqa: F401,F403
from diffjax.core.schedules import *  # noqa: F401,F403
from diffjax.core.process import *  # noqa: F401,F403
from diffjax.core.sde import *  # noqa: F401,F403
from diffjax.core.parameterizations import *  # noqa: F401,F403
from diffjax.core.mixture import *  # noqa: F401,F403
from diffjax.core.losses import *  # noqa: F401,F403
from diffjax.core.weighting import *  # noqa: F401,F403
from diffjax.core.likelihood import *  # noqa: F401,F403
from diffjax.core.guidance import *  # noqa: F401,F403
from diffjax.core.learned_variance import *  # noqa: F401,F403
from diffjax.core.contrastive import *  # noqa: F401,F403
from diffjax.core import contracts, schedules, process, chains, sde, parameterizations, mixture, losses, likelihood, \
    guidance, learned_variance, weighting, contrastive

__all__ = (contracts.__all__ + schedules.__all__ + process.__all__ + sde.__all__ + parameterizations.__all__
           + mixture.__all__ + losses.__all__ + weighting.__all__ + likelihood.__all__ + guidance.__all__
           + learned_variance.__all__ + contrastive.__all__)
