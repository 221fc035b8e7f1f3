"""Fit the polynomial behind ``slab_ms.layers.common.GELU``'s eval form and print its error.

    python scripts/fit_gelu.py [--degree 6]

The exact GELU is ``x * Phi(x)``. Writing ``Phi(x) = sigmoid(logit(Phi(x)))`` and approximating the
odd function ``logit(Phi(x))`` by ``x * Q(x^2)`` gives ``GELU(x) ~= x * sigmoid(x * Q(x^2))``: only
multiplies, adds and one sigmoid, which MindSpore's CPU backend runs far faster than its Erf.
``Q`` is a weighted minimax fit (Lawson's iteration) of the GELU's absolute error on [0, 7.5];
beyond that ``Phi`` is 1 or 0 in float32 and only needs ``x * Q(x^2)`` to keep growing, which the
check below verifies (and that no float32 input gives NaN). Needs scipy (installed with MindSpore).
"""
import argparse

import numpy as np
from scipy.special import log_ndtr, ndtr


def fit(degree):
    x = np.linspace(1e-4, 7.5, 20000)
    target = log_ndtr(x) - log_ndtr(-x)  # logit(Phi(x))
    phi = ndtr(x)
    sens = phi * (1 - phi) * np.maximum(1.0, x)  # d GELU / d logit, bounded below by the |x| >= 1 growth
    a = np.stack([x ** (2 * i + 1) for i in range(degree + 1)], 1)
    w = sens.copy()
    for _ in range(200):
        coef, *_ = np.linalg.lstsq(a * w[:, None], target * w, rcond=None)
        err = np.abs(a @ coef - target) * sens
        w = w * np.sqrt(err / err.max()) + 1e-30
        w *= sens.max() / w.max()
    return coef


def gelu_fp32(xs, coef):
    """The eval form evaluated in float32, in the order the MindSpore cell uses."""
    s = xs * xs
    acc = np.float32(coef[-1])
    for c in coef[-2::-1]:
        acc = (acc * s + np.float32(c)).astype(np.float32)
    with np.errstate(over="ignore"):
        z = (acc * xs).astype(np.float32)
        return (xs / (np.float32(1) + np.exp(-z))).astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--degree", type=int, default=6, help="degree of Q in x^2")
    args = p.parse_args()
    coef = fit(args.degree)
    xs = np.linspace(-12, 12, 400001).astype(np.float32)
    exact = xs.astype(np.float64) * ndtr(xs.astype(np.float64))
    err = np.abs(gelu_fp32(xs, coef) - exact)
    with np.errstate(over="ignore", invalid="ignore"):
        big = np.array([7.5, 8, 10, 20, 100, 1e3, 1e4, 1e20, 3e38], np.float32)
        z_big = np.array([np.float32(c) for c in coef[::-1]])  # highest first for polyval
        grows = np.all(np.diff(np.polyval(z_big.astype(np.float64), big.astype(np.float64) ** 2) * big) > 0)
        tails = gelu_fp32(np.concatenate([big, -big]), coef)
    print("coefficients (x, x^3, ...):", ", ".join(f"{c:.9e}" for c in coef))
    print(f"float32 max |error| on [-12, 12] against float64: {err.max():.2e} at x = {xs[err.argmax()]:.3f}")
    print(f"x * Q(x^2) increasing beyond 7.5: {grows}; tails (+x, then -x): {tails.tolist()}")


if __name__ == "__main__":
    main()
