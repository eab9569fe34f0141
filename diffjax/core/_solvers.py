"""The adaptive ODE solvers of :func:`~diffjax.core.likelihood.log_likelihood` and
:func:`~diffjax.samplers.ode_adaptive`: diffrax explicit Runge-Kutta solvers with an embedded error estimate.

Both take the solver object itself (``solver=diffrax.Tsit5()``, as ``diffrax.diffeqsolve(solver=...)`` does;
``None``: ``diffrax.Dopri5()``, scipy's RK45 as in score-SDE); a config names it with a string that
:mod:`diffjax.config_lib` resolves once (``SOLVERS``). diffrax solvers are equinox modules, equal and hashing by
value, so a fresh ``diffrax.Dopri5()`` is the same jit static argument as the last one (no retrace).
diffrax is imported on first use: the rest of the core does not need it.
"""
from __future__ import annotations


def check_solver(solver):
    """``solver`` (``None``: ``diffrax.Dopri5()``) and ``(fixed, per_step)``, its vector-field evaluations.

    A solve of ``num_steps`` attempted (accepted + rejected) steps costs ``fixed + per_step * num_steps``
    evaluations: diffrax evaluates every stage of the first step and afterwards reuses the last stage of an FSAL
    tableau (Dopri5, Tsit5, Bosh3) as the next first stage, so ``fixed`` = 1 for FSAL solvers, 0 otherwise, and
    ``per_step`` = stages - ``fixed`` (checked against a counting vector field in the tests, with and without
    diffrax's initial step-size selection).

    Raises:
        ValueError: ``solver`` is not a diffrax explicit Runge-Kutta solver with an error estimate.
    """
    import diffrax

    if solver is None:
        solver = diffrax.Dopri5()
    tableau = getattr(solver, "tableau", None) if isinstance(solver, diffrax.AbstractERK) else None
    if tableau is None or getattr(tableau, "b_error", None) is None:
        raise ValueError(f"solver must be an explicit Runge-Kutta solver of diffrax with an error estimate "
                         f"(diffrax.Dopri5(), diffrax.Tsit5(), diffrax.Bosh3(), diffrax.Heun(), ...), got {solver!r}")
    fsal = int(bool(tableau.fsal))
    return solver, (fsal, int(tableau.num_stages) - fsal)
