"""Parameter updates: momentum SGD (the paper's) and Adam.

Momentum SGD moves every weight by the same learning rate times its gradient, which needs the
rate tuned to the model's gradient scale.  Fine-tuning a pretrained model on a grid from a few
hundred inputs is the case Adam suits: each weight's step is scaled by its own gradient history,
so one rate (about 1e-4 of the weights' size) works across layers whose gradients differ by
orders of magnitude, as the depthwise and pointwise convs of a mobile net do.
"""

from __future__ import annotations

import numpy as np

OPTIMIZERS = ("sgd", "adam")


class Optimizer:
    """`step(name, grad, lr)` -> the update to add to parameter `name` (state kept per name)."""

    def __init__(self, kind: str, momentum: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        if kind not in OPTIMIZERS:
            raise ValueError(kind)
        self.kind, self.momentum, self.beta2, self.eps = kind, momentum, beta2, eps
        self.first: dict[str, np.ndarray] = {}
        self.second: dict[str, np.ndarray] = {}
        self.count: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the moments (after a rewind to a checkpoint)."""
        self.first.clear()
        self.second.clear()
        self.count.clear()

    def step(self, name: str, grad: np.ndarray, lr: float) -> np.ndarray:
        m = self.first.get(name)
        if m is None:
            m = self.first[name] = np.zeros(grad.shape, np.float32)
        if self.kind == "sgd":
            m *= self.momentum
            m -= lr * grad
            return m
        v = self.second.get(name)
        if v is None:
            v = self.second[name] = np.zeros(grad.shape, np.float32)
        t = self.count[name] = self.count.get(name, 0) + 1
        m *= self.momentum
        m += (1 - self.momentum) * grad
        v *= self.beta2
        v += (1 - self.beta2) * grad * grad
        # bias-corrected moments: lr · m̂ / (√v̂ + ε)
        m_hat = m / (1 - self.momentum ** t)
        v_hat = v / (1 - self.beta2 ** t)
        return (-lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)
