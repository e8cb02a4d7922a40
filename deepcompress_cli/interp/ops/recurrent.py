"""Recurrent layers: LSTM, GRU and RNN (every direction, layout, activation, clip and sequence_lens).

One GEMM projects the inputs of every time step and direction at once; only the recurrence
(h @ R^T and the gates) loops, over time steps, vectorized over batch and directions.  A reverse
direction runs forward over its inputs reordered in time per batch entry (so sequences of
different lengths each start at their own last valid step), and its outputs are put back in place.
"""

from __future__ import annotations

import numpy as np

from ...blas import single_threaded
from ...errors import DczError
from . import op
from .shape import input_at, str_attr


def _sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-x) = inf gives 1 / inf = 0, exactly the limit
        y = np.exp(-x)
    y += 1
    return np.reciprocal(y, out=y)


# name -> (default alpha, default beta, f(x, alpha, beta)); None: the function takes no such value.
ACTIVATIONS = {
    "sigmoid": (None, None, lambda x, a, b: _sigmoid(x)),
    "tanh": (None, None, lambda x, a, b: np.tanh(x)),
    "relu": (None, None, lambda x, a, b: np.maximum(x, 0)),
    "affine": (1.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (0.01, None, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1.0, None, lambda x, a, b: np.where(x > a, x, 0)),
    "scaledtanh": (1.0, 1.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "elu": (1.0, None, lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0)))),
    "softsign": (None, None, lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (None, None, lambda x, a, b: np.logaddexp(x, 0)),
}


def activations(attrs: dict, op_name: str, defaults: list[str], directions: int) -> list[list[tuple]]:
    """Per direction, its activations as (name, alpha, beta).

    activation_alpha/beta are consumed in order by the functions that take such a value, a
    function past the end of the list taking its operator's default (as onnxruntime reads them).
    """
    names = [n.decode() if isinstance(n, bytes) else n for n in attrs.get("activations", [])] or defaults * directions
    if len(names) == len(defaults) and directions == 2:
        names = names * 2  # one list given for both directions
    if len(names) != len(defaults) * directions:
        raise DczError(f"{op_name}: {len(names)} activations given, expected {len(defaults) * directions}.")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    functions = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATIONS:
            raise DczError(f"{op_name}: unsupported activation {name!r}.")
        alpha, beta, _ = ACTIVATIONS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        functions.append((key, alpha, beta))
    k = len(defaults)
    return [functions[d * k:(d + 1) * k] for d in range(directions)]


def apply(functions: list[tuple], x: np.ndarray, clip: float | None) -> np.ndarray:
    """functions[d] on x[d] (x: [directions, ...]); clip bounds the activation's input first."""
    if clip is not None:
        x = np.clip(x, -clip, clip)
    if all(f == functions[0] for f in functions):
        name, alpha, beta = functions[0]
        return ACTIVATIONS[name][2](x, alpha, beta)
    return np.stack([ACTIVATIONS[name][2](x[d], alpha, beta) for d, (name, alpha, beta) in enumerate(functions)])


class Recurrence:
    """What LSTM, GRU and RNN share: inputs in time-major order, per-direction weights, masks."""

    def __init__(self, op_name: str, inputs: list, attrs: dict, gates: int):
        self.op_name = op_name
        x, w, r = inputs[0], inputs[1], inputs[2]
        direction = str_attr(attrs, "direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise DczError(f"{op_name}: unknown direction {direction!r}.")
        self.reverse = [direction == "reverse"] if direction != "bidirectional" else [False, True]
        self.dirs = len(self.reverse)
        hidden = r.shape[-1]
        rows = gates * hidden
        if x.ndim != 3 or w.shape != (self.dirs, rows, x.shape[2]) or r.shape != (self.dirs, rows, hidden) \
                or attrs.get("hidden_size", hidden) != hidden:
            raise DczError(f"{op_name}: X {list(x.shape)}, W {list(w.shape)}, R {list(r.shape)} and hidden_size "
                           f"{attrs.get('hidden_size')} do not fit {direction} with {gates} gates.")
        self.layout = attrs.get("layout", 0)
        if self.layout:
            x = x.transpose(1, 0, 2)  # [batch, seq, input] -> [seq, batch, input]
        self.steps, self.batch, self.hidden, self.dtype = x.shape[0], x.shape[1], hidden, x.dtype
        self.clip = attrs.get("clip")
        b = input_at(inputs, 3)
        self.bias = np.zeros((self.dirs, 2 * gates * hidden), x.dtype) if b is None else b.astype(x.dtype, copy=False)
        self.rt = r.transpose(0, 2, 1)  # [dirs, hidden, gates*hidden]
        # One GEMM for every step and direction: [seq, batch, dirs, gates*hidden].
        self.projected = (x.reshape(-1, x.shape[2]) @ w.reshape(-1, w.shape[2]).T).reshape(
            self.steps, self.batch, self.dirs, gates * hidden)
        lens = input_at(inputs, 4)
        self.lens = None
        if lens is not None:
            lens = np.asarray(lens).astype(np.int64).reshape(-1)
            if lens.shape != (self.batch,) or (lens < 0).any() or (lens > self.steps).any():
                raise DczError(f"{op_name}: sequence_lens {lens.tolist()[:8]} do not fit {self.steps} steps "
                               f"and batch {self.batch}.")
            if (lens != self.steps).any():
                self.lens = lens

    def state(self, value) -> np.ndarray:
        """An initial state [dirs, batch, hidden] (zeros when omitted), whatever the layout."""
        if value is None:
            return np.zeros((self.dirs, self.batch, self.hidden), self.dtype)
        if self.layout:
            value = value.transpose(1, 0, 2)
        if value.shape != (self.dirs, self.batch, self.hidden):
            raise DczError(f"{self.op_name}: initial state {list(value.shape)} is not "
                           f"{[self.dirs, self.batch, self.hidden]} in time-major order.")
        return value.astype(self.dtype, copy=False)

    def time_order(self) -> np.ndarray | None:
        """[seq, batch] step -> time index for a reverse direction: each sequence's own steps
        backwards, padding in place (the map is its own inverse).  None: plain reversal."""
        if self.lens is None:
            return None
        k = np.arange(self.steps)[:, None]
        return np.where(k < self.lens, self.lens - 1 - k, k)

    def inputs_by_step(self, extra_bias: np.ndarray) -> np.ndarray:
        """Projected inputs + bias as [seq, dirs, batch, gates*hidden], reverse directions reordered."""
        xw = self.projected  # [seq, batch, dirs, G], a fresh array used once: updated in place
        xw += extra_bias[None, None]
        order = self.time_order()
        for d, rev in enumerate(self.reverse):
            if rev:
                xw[:, :, d] = xw[::-1, :, d] if order is None else xw[order, np.arange(self.batch), d]
        return xw.transpose(0, 2, 1, 3)

    def valid(self, step: int):
        """[1, batch, 1] mask of the sequences still running at `step`, or None when all do."""
        return None if self.lens is None else (step < self.lens)[None, :, None]

    def outputs(self, ys: list, states: list) -> list:
        """Y [seq, dirs, batch, hidden] from the per-step outputs (zero past a sequence's end), then
        the final states, in the node's layout."""
        y = np.stack(ys) if ys else np.zeros((0, self.dirs, self.batch, self.hidden), self.dtype)
        order = self.time_order()
        for d, rev in enumerate(self.reverse):
            if rev:
                y[:, d] = y[::-1, d] if order is None else y[order, d, np.arange(self.batch)]
        if self.layout:
            return [y.transpose(2, 0, 1, 3), *(s.transpose(1, 0, 2) for s in states)]
        return [y, *states]


def run_steps(rec: Recurrence, xw: np.ndarray, states: list, step) -> list:
    """Loops step(xw[t], *states) -> new states (the first is h) over time; a finished sequence
    keeps its state and outputs zeros (an empty one ends with zero states)."""
    ys = []
    with single_threaded():  # a step's products are small: BLAS threads would cost more than they give
        for t in range(rec.steps):
            new = step(xw[t], *states)
            mask = rec.valid(t)
            if mask is not None:
                new = [np.where(mask, n, s) for n, s in zip(new, states)]
                ys.append(np.where(mask, new[0], 0))
            else:
                ys.append(new[0])
            states = new
    if rec.lens is not None and (rec.lens == 0).any():  # no last step: zeros, as onnxruntime
        states = [np.where((rec.lens == 0)[None, :, None], 0, s) for s in states]
    return rec.outputs(ys, states)


@op("LSTM")
def lstm(inputs, attrs, ctx):
    """Gates i, o, f, c: c' = f*c + i*g(xWc + hRc + b), h' = o*h(c'); peepholes P (i, o, f) see
    c (o sees c'); input_forget couples f = 1 - i."""
    rec = Recurrence("LSTM", inputs, attrs, 4)
    hid = rec.hidden
    acts = activations(attrs, "LSTM", ["Sigmoid", "Tanh", "Tanh"], rec.dirs)
    f_act, g_act, h_act = ([a[k] for a in acts] for k in range(3))
    xw = rec.inputs_by_step((rec.bias[:, :4 * hid] + rec.bias[:, 4 * hid:]))
    peep = input_at(inputs, 7)
    if peep is not None:
        peep = peep.astype(rec.dtype, copy=False).reshape(rec.dirs, 1, 3 * hid)
        p_i, p_o, p_f = peep[..., :hid], peep[..., hid:2 * hid], peep[..., 2 * hid:]
    coupled = bool(attrs.get("input_forget", 0))
    clip = rec.clip

    def step(x_t, h, c):
        g = np.matmul(h, rec.rt)
        g += x_t
        cand = apply(g_act, g[..., 3 * hid:], clip)
        if peep is None:  # i, o, f are adjacent: one activation call for the three
            i, o, f = np.split(apply(f_act, g[..., :3 * hid], clip), 3, axis=-1)
        else:
            i = apply(f_act, g[..., :hid] + p_i * c, clip)
            f = apply(f_act, g[..., 2 * hid:3 * hid] + p_f * c, clip)
        if coupled:
            f = 1 - i
        c_new = f * c + i * cand
        if peep is not None:
            o = apply(f_act, g[..., hid:2 * hid] + p_o * c_new, clip)
        return [o * apply(h_act, c_new, None), c_new]

    return run_steps(rec, xw, [rec.state(input_at(inputs, 5)), rec.state(input_at(inputs, 6))], step)


@op("GRU")
def gru(inputs, attrs, ctx):
    """Gates z, r, h: h' = (1-z)*g(xWh + (r*h)Rh + b) + z*h; linear_before_reset applies r after
    the recurrent product: g(xWh + r*(hRh + Rbh) + Wbh)."""
    rec = Recurrence("GRU", inputs, attrs, 3)
    hid = rec.hidden
    acts = activations(attrs, "GRU", ["Sigmoid", "Tanh"], rec.dirs)
    f_act, g_act = [a[0] for a in acts], [a[1] for a in acts]
    linear_before_reset = bool(attrs.get("linear_before_reset", 0))
    w_bias, r_bias = rec.bias[:, :3 * hid], rec.bias[:, 3 * hid:]
    folded = w_bias + r_bias
    if linear_before_reset:
        folded[:, 2 * hid:] = w_bias[:, 2 * hid:]  # Rbh stays inside r * (...)
    xw = rec.inputs_by_step(folded)
    rt_zr, rt_h = rec.rt[..., :2 * hid], rec.rt[..., 2 * hid:]
    rb_h = r_bias[:, None, 2 * hid:]
    clip = rec.clip

    def step(x_t, h):
        zr = apply(f_act, x_t[..., :2 * hid] + np.matmul(h, rt_zr), clip)
        z, r = zr[..., :hid], zr[..., hid:]
        if linear_before_reset:
            pre = x_t[..., 2 * hid:] + r * (np.matmul(h, rt_h) + rb_h)
        else:
            pre = x_t[..., 2 * hid:] + np.matmul(r * h, rt_h)
        return [(1 - z) * apply(g_act, pre, clip) + z * h]

    return run_steps(rec, xw, [rec.state(input_at(inputs, 5))], step)


@op("RNN")
def rnn(inputs, attrs, ctx):
    """h' = f(xW + hR + Wb + Rb)."""
    rec = Recurrence("RNN", inputs, attrs, 1)
    acts = [a[0] for a in activations(attrs, "RNN", ["Tanh"], rec.dirs)]
    xw = rec.inputs_by_step(rec.bias[:, :rec.hidden] + rec.bias[:, rec.hidden:])

    def step(x_t, h):
        return [apply(acts, x_t + np.matmul(h, rec.rt), rec.clip)]

    return run_steps(rec, xw, [rec.state(input_at(inputs, 5))], step)


@op("com.microsoft.DynamicQuantizeLSTM")
def dynamic_quantize_lstm(inputs, attrs, ctx):
    """onnxruntime's LSTM on 8-bit weights (what onnxruntime.quantization.quantize_dynamic makes of
    an LSTM): W [dirs, input, 4H] and R [dirs, H, 4H] (transposed from LSTM's), each with a scale
    and zero point per direction [dirs] or per gate row [dirs, 4H] (inputs 8-11).

    Runs LSTM on the dequantized weights; onnxruntime also rounds X and h to 8 bits on the fly,
    so its outputs differ from these by that rounding.
    """
    if len(inputs) < 12 or any(v is None for v in inputs[8:12]):
        raise DczError("DynamicQuantizeLSTM: W_scale, W_zero_point, R_scale and R_zero_point are required.")

    def dequantized(q, scale, zero_point):
        dirs = q.shape[0]
        zero_point = np.asarray(zero_point).reshape(dirs, 1, -1).astype(np.float32)
        values = (q.astype(np.float32) - zero_point) * np.asarray(scale, np.float32).reshape(dirs, 1, -1)
        return values.transpose(0, 2, 1)

    w = dequantized(inputs[1], inputs[8], inputs[9])
    r = dequantized(inputs[2], inputs[10], inputs[11])
    return lstm([inputs[0], w, r, *inputs[3:8]], attrs, ctx)
