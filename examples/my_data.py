"""A data set of one's own: a function that returns (x_train, y_train, x_test, y_test) and,
optionally, the class names; advrun checks the arrays and applies n_train, n_test and classes."""

import numpy as np


def bars(n=800, size=8, noise=0.3, seed=0):
    """Grey images of one bright bar on a noisy background: class 0 horizontal, class 1 vertical,
    at a random row or column. Inputs in [0, 1], shape (n, 1, size, size); a quarter for testing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(0.0, noise, (n, 1, size, size))
    where = rng.integers(0, size, n)
    for i in range(n):
        bar = 1.0 - rng.uniform(0.0, noise, size)
        if y[i] == 0:
            x[i, 0, where[i], :] = bar
        else:
            x[i, 0, :, where[i]] = bar
    split = 3 * n // 4
    return x[:split], y[:split], x[split:], y[split:], ["horizontal", "vertical"]
