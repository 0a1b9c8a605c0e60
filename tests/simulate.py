"""A BG/NBD simulator: customer histories with known parameters for the tests."""

from __future__ import annotations

import numpy as np


def simulate_bgnbd(
    n: int,
    r: float,
    alpha: float,
    a: float,
    b: float,
    T: float | np.ndarray,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``(x, t_x, T)`` for ``n`` customers from a BG/NBD process.

    Each customer has ``lambda ~ Gamma(r, rate=alpha)`` and ``p ~ Beta(a, b)``,
    buys as a Poisson process with rate ``lambda`` and drops out after each
    repeat purchase with probability ``p``; observation lasts ``T``.

    Parameters
    ----------
    n : int
        Number of customers.
    r, alpha, a, b : float
        BG/NBD parameters.
    T : float or np.ndarray
        Observation length per customer (scalar or shape ``(n,)``).
    seed : int
        Seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    tuple of np.ndarray
        ``x`` (int64), ``t_x`` and ``T`` (float64).
    """
    rng = np.random.default_rng(int(seed))
    T_arr = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,)).copy()
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    # The customer dies right after repeat purchase number J ~ Geometric(p).
    j = rng.geometric(np.clip(p, 1e-300, 1.0))
    n_poisson = rng.poisson(lam * T_arr)
    x = np.minimum(n_poisson, j).astype(np.int64)
    # Given N(T) = m events, the x-th event time is T * Beta(x, m - x + 1).
    t_x = np.zeros(n)
    pos = x > 0
    t_x[pos] = T_arr[pos] * rng.beta(x[pos], n_poisson[pos] - x[pos] + 1)
    return x, t_x, T_arr
