"""The JAX side of NTGA: the infinite-width surrogate's neural tangent kernel (neural-tangents)
and the gradient of the NTK-GP's validation loss with respect to a block of training images.

Imported only when NTGA runs; `require_jax()` names what to install when it is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from ueb.errors import ConfigError

GradFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]

INSTALL = "pip install 'ueb[ntga]' for JAX and neural-tangents"


def missing_packages() -> list[str]:
    """Which of NTGA's optional packages cannot be imported here."""
    return [name for name in ("jax", "neural_tangents") if importlib.util.find_spec(name) is None]


def load_torch_natives_first() -> None:
    """Load the native libraries torch pulls in lazily (triton, through torch._dynamo) before
    JAX's: with jaxlib and TensorFlow (which neural-tangents imports) already loaded, torch's
    later import of triton crashes the process (a segmentation fault at the victim's first
    optimiser, seen with torch 2.14.1 and JAX 0.4.35). Loaded in this order, both work."""
    import torch._dynamo  # noqa: F401


def require_jax() -> None:
    """Both packages present, and importable together: a neural-tangents release built for an
    older JAX fails at import (e.g. `jax.core.Jaxpr` is gone from recent JAX), which would
    otherwise surface as a traceback in the middle of a run."""
    missing = missing_packages()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(
            f"ntga needs {' and '.join(missing)}, which {verb} not installed", INSTALL
        )
    load_torch_natives_first()
    try:
        import neural_tangents  # noqa: F401
    except Exception as exc:  # an ImportError, or whatever a mismatched build raises
        raise ConfigError(
            f"ntga cannot import neural-tangents with the JAX installed here "
            f"({_version('jax')}; neural-tangents {_version('neural-tangents')}): "
            f"{type(exc).__name__}: {exc}",
            "install the versions the extra pins: pip install 'ueb[ntga]'",
        ) from exc


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown version"


def surrogate_kernel(model: str, num_classes: int, w_var: float, b_var: float) -> Any:
    """The kernel function of the official surrogates: `cnn` (two 5x5 stride-2 conv + ReLU
    layers, then dense 384, 192 and the classes) or `fnn` (five dense + erf layers of 512 on
    the flattened image)."""
    from neural_tangents import stax

    w, b = float(np.sqrt(w_var)), float(np.sqrt(b_var))
    if model == "cnn":
        convs = [
            stax.serial(
                stax.Conv(64, (5, 5), strides=(2, 2), padding="SAME", W_std=w, b_std=b), stax.Relu()
            )
            for _ in range(2)
        ]
        head = [
            stax.Flatten(),
            stax.Dense(384, w, b),
            stax.Dense(192, w, b),
            stax.Dense(num_classes, w, b),
        ]
        return stax.serial(*convs, *head)[2]
    dense = [stax.serial(stax.Dense(512, w, b), stax.Erf()) for _ in range(5)]
    return stax.serial(stax.Flatten(), *dense)[2]


def validation_loss_grad(
    model: str, num_classes: int, w_var: float, b_var: float, t: float, diag_reg: float,
    val_batch: int,
) -> GradFn:  # fmt: skip
    """d/dx_block of the cross-entropy, summed over the validation set, of the NTK-GP trained
    for time `t` on (x_block, y_block) by gradient descent on the MSE (mean prediction of the
    infinitely wide surrogate, started at zero output). Validation is taken in `val_batch`
    chunks whose gradients are summed (the remainder past whole chunks is left out, as in the
    official code). Arrays are NHWC float64, labels one-hot."""
    load_torch_natives_first()
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt

    jax.config.update("jax_enable_x64", True)
    kernel_fn = jax.jit(surrogate_kernel(model, num_classes, w_var, b_var), static_argnums=(2,))

    def loss(x_block: Any, y_block: Any, x_val: Any, y_val: Any) -> Any:
        k_train = kernel_fn(x_block, x_block, "ntk")
        k_val = kernel_fn(x_val, x_block, "ntk")
        predict = nt.predict.gradient_descent_mse(k_train, y_block, diag_reg=diag_reg)
        _, fx_val = predict(t, 0.0, 0.0, k_val)
        return -jnp.sum(jax.nn.log_softmax(fx_val) * y_val)

    grad = jax.jit(jax.grad(loss, argnums=0))

    def total(
        x_block: np.ndarray, y_block: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
    ) -> np.ndarray:
        out = np.zeros_like(x_block)
        for i in range(len(x_val) // val_batch):
            part = slice(i * val_batch, (i + 1) * val_batch)
            out += np.asarray(grad(x_block, y_block, x_val[part], y_val[part]))
        return out

    return total
