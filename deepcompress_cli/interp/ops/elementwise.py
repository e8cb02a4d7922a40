"""Elementwise kernels: arithmetic, activations, comparisons, logic and variadic ops
(casts are in cast.py).

Binary ops use numpy broadcasting, which is ONNX's multidirectional broadcasting.  Results keep
the input dtype (float32 stays float32); outputs go through np.asarray because numpy ufuncs turn
0-d arrays into numpy scalars.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ...errors import DczError
from . import op
from .broadcast import check_broadcast
from .shape import attr_or_input, str_attr


def _same(x, dtype) -> np.ndarray:
    """`x` as an array of `dtype` (a no-op when it already is one)."""
    return np.asarray(x).astype(dtype, copy=False)


def _scalar(value, x: np.ndarray):
    """An attribute constant in x's dtype, so float32 math stays float32."""
    return np.asarray(value, dtype=x.dtype)


# ------------------------------------------------------------------------------ binary arithmetic


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C/ONNX), not flooring like numpy's //."""
    with np.errstate(divide="ignore", invalid="ignore"):  # x/0 is undefined in ONNX too
        q = np.floor_divide(a, b)
        inexact = np.remainder(a, b) != 0
    return q + (inexact & ((a < 0) != (b < 0))).astype(q.dtype)


def _div(a, b):
    if a.dtype.kind in "iu":
        return _int_div(a, b)
    return np.divide(a, b)


def _pow(a, b):
    # Pow's exponent may have another type (opset 12+); the result has the base's type.
    if a.dtype.kind in "iu":
        if b.dtype.kind in "iu" and np.all(b >= 0):
            return np.power(a, b.astype(a.dtype))  # exact integer powers
        # Fractional or negative exponents go through float64; the cast back truncates.
        return _same(np.power(a.astype(np.float64), b), a.dtype)
    return _same(np.power(a, b), a.dtype)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "Equal": np.equal, "Greater": np.greater, "Less": np.less,
    "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}


def _binary(fn, name):
    def kernel(inputs, attrs, ctx):
        a, b = inputs
        check_broadcast(ctx, name, a, b)
        return [np.asarray(fn(a, b))]
    return kernel


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn, _name))


# ------------------------------------------------------------------------------ unary math


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in x's precision: float32 (and float16) in float32, anything else in float64."""
    x = np.asarray(x)
    if x.dtype in (np.float32, np.float16):
        return _erf_float32(x.astype(np.float32, copy=False))
    return _erf_float64(x)


# atanh(erf(x)) ~ x * P(x^2), P's coefficients from x^0 up.  Fitted with numpy (least squares
# on Chebyshev points of [0, 4.5], Lawson-reweighted towards minimax) on the error that reaches
# erf, i.e. weighted by tanh's slope 1 - erf(x)^2: the fit only has to be good where erf is not
# yet 1.  Its coefficients in float32 keep atanh(erf) growing past 24 at the clip point 4.5.
_ATANH_ERF = np.array([
    1.1283792506036465, 0.10277134422546226, -0.00020413468277307394, -0.0005985629679139869,
    7.144351606029939e-05, 5.654671716704947e-07, -1.133912094543072e-06, 1.3843726084927788e-07,
    -7.4200958814774065e-09, 1.539033622766084e-10], dtype=np.float32)
_ERF_CLIP = np.float32(4.5)  # erf(4.5) is 1 in float32 (1 - 2e-10)


def _erf_float32(x: np.ndarray) -> np.ndarray:
    """erf of float32 as tanh(x P(x^2)), in float32: max absolute error 9e-8 against math.erf
    (1.5 ulp of 1), 22 passes (the float64 path takes ~35 float64 ones plus two casts).

    Going through tanh, which saturates, keeps one polynomial good over the whole range: near 0
    erf ~ its argument, and towards 1 an error of the argument is damped by 1 - erf^2.
    NaN stays NaN, +-Inf gives +-1 (clipped), -0.0 stays -0.0.
    """
    if np.ndim(x) == 0:  # numpy makes scalars of 0-d results, which `out=` cannot take
        return _erf_float32(np.reshape(x, 1)).reshape(())
    z = np.clip(x, -_ERF_CLIP, _ERF_CLIP)
    u = z * z
    poly = u * _ATANH_ERF[-1]
    for coef in _ATANH_ERF[-2:0:-1]:
        poly += coef
        poly *= u
    poly += _ATANH_ERF[0]
    poly *= z
    return np.tanh(poly, out=poly)


def _erf_float64(x: np.ndarray) -> np.ndarray:
    """erf in float64 with < 6e-8 absolute error (no scipy at runtime), in a few passes.

    |x| < 0.5: Maclaurin series (9 terms, error < 3e-13).  Beyond: 1 - erfc with the Chebyshev
    fit of Numerical Recipes' erfcc (fractional error < 1.2e-7 on erfc, and erfc(0.5) < 0.48).
    A 24-term series up to |x| = 1 took 75x a tanh; a transformer's GELUs spent most of its time
    there.
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    # series: erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
    small = np.minimum(z, 0.5)
    z2 = small * small
    term, total = small.copy(), small.copy()
    for n in range(1, 9):
        term *= z2
        term *= -1.0 / n
        total += term * (1.0 / (2 * n + 1))
    total *= 2.0 / math.sqrt(math.pi)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    tail = 1.0 - t * np.exp(poly)
    return np.copysign(np.where(z < 0.5, total, tail), x)


def _erf_op(x):
    return _same(_erf(x), x.dtype)


def relu(x):
    if x.dtype.kind == "f":  # np.clip to +inf: 2.5-3x faster than np.maximum in numpy 2.4, the same values
        return np.clip(x, _scalar(0, x), _scalar(np.inf, x))
    return np.maximum(x, _scalar(0, x))


def sigmoid(x):
    # exp of -|x| never overflows; the two branches are the same function.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_UNARY = {
    "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Neg": np.negative, "Abs": np.abs,
    "Reciprocal": np.reciprocal, "Tanh": np.tanh, "Sigmoid": sigmoid, "Erf": _erf_op,
    "Floor": np.floor, "Ceil": np.ceil, "Round": np.round,  # np.round rounds half to even, as ONNX
    "Sign": np.sign, "Not": np.logical_not,
    "Relu": relu,
    "Softplus": lambda x: np.logaddexp(x, _scalar(0, x)),  # log(1 + e^x) without overflow
}


def _unary(fn):
    def kernel(inputs, attrs, ctx):
        return [_same(fn(inputs[0]), inputs[0].dtype)]
    return kernel


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


# ------------------------------------------------------------------------------ activations with attributes


@op("LeakyRelu")
def leaky_relu(inputs, attrs, ctx):
    x = inputs[0]
    return [np.where(x < 0, x * _scalar(attrs.get("alpha", 0.01), x), x)]


@op("PRelu")
def prelu(inputs, attrs, ctx):
    x, slope = inputs
    return [np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)]


@op("Elu")
def elu(inputs, attrs, ctx):
    x = inputs[0]
    return [np.where(x < 0, _scalar(attrs.get("alpha", 1.0), x) * np.expm1(np.minimum(x, 0)), x)]


@op("HardSigmoid")
def hard_sigmoid(inputs, attrs, ctx):
    x = inputs[0]
    y = x * _scalar(attrs.get("alpha", 0.2), x) + _scalar(attrs.get("beta", 0.5), x)
    return [np.clip(y, _scalar(0, x), _scalar(1, x))]


@op("HardSwish")
def hard_swish(inputs, attrs, ctx):
    x = inputs[0]  # x * HardSigmoid(x) with alpha 1/6, beta 0.5
    return [x * np.clip(x * _scalar(1 / 6, x) + _scalar(0.5, x), _scalar(0, x), _scalar(1, x))]


@op("Gelu")
def gelu(inputs, attrs, ctx):
    x = inputs[0]
    if str_attr(attrs, "approximate", "none") == "tanh":
        x64 = x.astype(np.float64)
        y = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    elif x.dtype == np.float32:  # float32 throughout: erf's float32 path and 4 more passes
        y = _erf(np.multiply(x, np.float32(1 / math.sqrt(2)), out=np.empty_like(x)))
        y += np.float32(1)
        y *= x
        y *= np.float32(0.5)
    else:
        x64 = x.astype(np.float64)
        y = 0.5 * x64 * (1 + _erf(x64 / math.sqrt(2)))
    return [_same(y, x.dtype)]


@op("Clip")
def clip(inputs, attrs, ctx):
    x = inputs[0]
    lo = attr_or_input(inputs, attrs, ctx, "min", 1, since=11)
    hi = attr_or_input(inputs, attrs, ctx, "max", 2, since=11)
    # max(., lo) then min(., hi): when lo > hi everything becomes hi, as the spec says.
    if lo is not None:
        x = np.maximum(x, _same(lo, x.dtype))
    if hi is not None:
        x = np.minimum(x, _same(hi, x.dtype))
    return [np.asarray(x)]


# ------------------------------------------------------------------------------ pass-through and selection


@op("Identity")
def identity(inputs, attrs, ctx):
    return [inputs[0]]


@op("Dropout")
def dropout(inputs, attrs, ctx):
    """Inference passes the data through (mask all true; of x's type before opset 10).
    training_mode (opset 12+) keeps each element with probability 1 - ratio and scales the kept
    ones by 1 / (1 - ratio).

    The keep mask is uniform(0, 1) >= ratio drawn from numpy's RandomState(seed) when the seed
    attribute is given (so a seeded run is reproducible), from fresh entropy otherwise.
    """
    x = inputs[0]
    training = ctx.opset >= 12 and len(inputs) > 2 and inputs[2] is not None and bool(inputs[2])
    ratio = float(inputs[1]) if training and inputs[1] is not None else 0.5
    if not training or ratio == 0:
        mask = np.ones(x.shape, dtype=bool if ctx.opset >= 10 else x.dtype)
        return [x, mask] if ctx.num_outputs > 1 else [x]
    if not 0 <= ratio < 1:
        raise DczError(f"Dropout node {ctx.node_name!r}: ratio {ratio} is not in [0, 1).")
    rng = np.random.RandomState(attrs["seed"]) if "seed" in attrs else np.random.RandomState()
    mask = rng.uniform(0, 1, x.shape) >= ratio
    return [np.where(mask, x * _scalar(1 / (1 - ratio), x), _scalar(0, x)), mask]


@op("Where")
def where(inputs, attrs, ctx):
    cond, x, y = inputs
    return [np.where(cond, x, y)]


def _variadic(fn):
    def kernel(inputs, attrs, ctx):
        return [np.asarray(functools.reduce(fn, [a for a in inputs if a is not None]))]
    return kernel


op("Max")(_variadic(np.maximum))
op("Min")(_variadic(np.minimum))
op("Sum")(_variadic(np.add))


@op("Mean")
def mean(inputs, attrs, ctx):
    arrays = [a for a in inputs if a is not None]
    total = functools.reduce(np.add, arrays)
    return [_same(total / len(arrays), arrays[0].dtype)]
