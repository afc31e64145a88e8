"""The next-word LSTM in NumPy: one step for suggestions, forward and backward for training.

The same network as `model.lstm.NextWordLSTM`, on its weights by their state_dict names:
embedding E (V, e) tied with the output layer, one LSTM layer of h units (gates i, f, g, o
as PyTorch orders them) whose output is projected back to e by W_hr, dropout on the
embedding and on the LSTM output while training. Everything is float32; batches are
time-major inside (time, batch, features) so that every step is one BLAS call on
contiguous rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device_model.checkpoint import Weights, param_shapes
from model.config import ModelConfig

EMB, W_IH, W_HH = "embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"
B_IH, B_HH, W_HR, OUT_B = "lstm.bias_ih_l0", "lstm.bias_hh_l0", "lstm.weight_hr_l0", "output_bias"
State = tuple[np.ndarray, np.ndarray]  # (projected output h (e,), cell c (h,))
OUTPUT_ROWS = 512  # positions per block of the output layer while training (memory bound)
_SUBSCRIPTS = {(2, 2): "ij,jk->ik", (1, 2): "j,jk->k", (2, 1): "ij,j->i"}


def _numpy_has_blas() -> bool:
    """Whether this NumPy was built with a BLAS (a build without one says name "none")."""
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
    except (AttributeError, KeyError, TypeError):
        return True  # cannot tell: matmul is right either way
    return bool(blas.get("found")) and blas.get("name") != "none"


HAS_BLAS = _numpy_has_blas()


def mm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b (1-D or 2-D). Without BLAS (python-for-android builds numpy so) einsum's loops
    are 3-5x faster than matmul's; with BLAS, matmul is (BENCHMARKS.md)."""
    if HAS_BLAS:
        return np.matmul(a, b, out=out)
    return np.einsum(_SUBSCRIPTS[a.ndim, b.ndim], a, b, out=out)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """In place: 1 / (1 + exp(-x)), written with tanh so that no exp overflows."""
    x *= 0.5
    np.tanh(x, out=x)
    x += 1.0
    x *= 0.5
    return x


def init_weights(config: ModelConfig, rng: np.random.Generator) -> Weights:
    """Fresh weights drawn like PyTorch's defaults (for tests and tiny models)."""
    bound = 1.0 / np.sqrt(config.hidden_size)
    weights = {name: rng.uniform(-bound, bound, shape).astype(np.float32)
               for name, shape in param_shapes(config).items()}
    weights[EMB] = rng.normal(0.0, 0.05, weights[EMB].shape).astype(np.float32)
    weights[OUT_B] = np.zeros(config.vocab_size, np.float32)
    return weights


def log_softmax(z: np.ndarray) -> np.ndarray:
    """In place along the last axis."""
    z -= z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


class NumpyLSTM:
    """The model's weights and its inference step; call `refresh()` after changing weights.

    `step` and `log_probs` keep no state of their own: threads may share one model."""

    def __init__(self, weights: Weights, config: ModelConfig) -> None:
        shapes = param_shapes(config)
        if {k: v.shape for k, v in weights.items()} != shapes:
            raise ValueError(f"weights do not fit {config}")
        self.config = config
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.refresh()

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def num_parameters(self) -> int:
        return sum(v.size for v in self.weights.values())

    def refresh(self) -> None:
        """Rebuild the inference layout: W_xh [x, h] + bias gives all four gates at once
        (matrix times vector, rows contiguous: the fastest and most exact form without BLAS)."""
        w = self.weights
        self._w_xh = np.ascontiguousarray(np.concatenate([w[W_IH], w[W_HH]], axis=1))
        self._bias = w[B_IH] + w[B_HH]

    def zero_state(self) -> State:
        return (np.zeros(self.config.embed_dim, np.float32),
                np.zeros(self.config.hidden_size, np.float32))

    def step(self, state: State | None, word_id: int) -> State:
        """The state after reading `word_id` (None: the zero state before anything)."""
        h, c = state if state is not None else self.zero_state()
        n = self.config.hidden_size
        gates = mm(self._w_xh, np.concatenate([self.weights[EMB][word_id], h]))
        gates += self._bias
        sigmoid(gates[:2 * n])
        sigmoid(gates[3 * n:])
        np.tanh(gates[2 * n:3 * n], out=gates[2 * n:3 * n])
        c = gates[n:2 * n] * c + gates[:n] * gates[2 * n:3 * n]
        h_full = np.tanh(c) * gates[3 * n:]
        return mm(self.weights[W_HR], h_full), c

    def log_probs(self, state: State) -> np.ndarray:
        """Normalised log-probabilities (V,) of the next word after `state`."""
        z = mm(self.weights[EMB], state[0])
        z += self.weights[OUT_B]
        return log_softmax(z)


@dataclass
class ForwardCache:
    """What the backward pass needs from the forward pass (time-major arrays)."""

    x: np.ndarray  # (T, B, e) LSTM inputs (after dropout)
    gates: np.ndarray  # (T, B, 4h) i, f, g, o after their nonlinearities
    cells: np.ndarray  # (T + 1, B, h) c, starting from zeros
    tanh_cells: np.ndarray  # (T, B, h)
    h_full: np.ndarray  # (T, B, h) o * tanh(c), before the projection
    hs: np.ndarray  # (T + 1, B, e) projected outputs, starting from zeros


def lstm_forward(w: Weights, x: np.ndarray) -> ForwardCache:
    """Run the LSTM layer over inputs x (T, B, e) from the zero state."""
    steps, batch, _ = x.shape
    n, e = w[W_HR].shape[1], w[W_HR].shape[0]
    gates = mm(x.reshape(steps * batch, -1), w[W_IH].T).reshape(steps, batch, 4 * n)
    gates += w[B_IH] + w[B_HH]
    cells = np.zeros((steps + 1, batch, n), np.float32)
    tanh_cells = np.empty((steps, batch, n), np.float32)
    h_full = np.empty((steps, batch, n), np.float32)
    hs = np.zeros((steps + 1, batch, e), np.float32)
    w_hh_t, w_hr_t = w[W_HH].T, w[W_HR].T
    for t in range(steps):
        a = gates[t]
        a += mm(hs[t], w_hh_t)
        sigmoid(a[:, :2 * n])
        sigmoid(a[:, 3 * n:])
        np.tanh(a[:, 2 * n:3 * n], out=a[:, 2 * n:3 * n])
        np.multiply(a[:, n:2 * n], cells[t], out=cells[t + 1])
        cells[t + 1] += a[:, :n] * a[:, 2 * n:3 * n]
        np.tanh(cells[t + 1], out=tanh_cells[t])
        np.multiply(a[:, 3 * n:], tanh_cells[t], out=h_full[t])
        mm(h_full[t], w_hr_t, out=hs[t + 1])
    return ForwardCache(x, gates, cells, tanh_cells, h_full, hs)


def lstm_backward(w: Weights, cache: ForwardCache, d_hs: np.ndarray
                  ) -> tuple[Weights, np.ndarray]:
    """(gradients of the LSTM weights, gradient of the inputs (T, B, e)) from d_hs (T, B, e)."""
    steps, batch, e = d_hs.shape
    n = cache.cells.shape[2]
    w_hh, w_hr = w[W_HH], w[W_HR]
    d_gates = np.empty_like(cache.gates)
    d_h_all = np.empty_like(d_hs)
    d_h = np.zeros((batch, e), np.float32)
    d_c = np.zeros((batch, n), np.float32)
    for t in reversed(range(steps)):
        d_h += d_hs[t]
        d_h_all[t] = d_h
        d_h_full = mm(d_h, w_hr)
        a, tc, da = cache.gates[t], cache.tanh_cells[t], d_gates[t]
        i, f, g, o = a[:, :n], a[:, n:2 * n], a[:, 2 * n:3 * n], a[:, 3 * n:]
        d_c += d_h_full * o * (1.0 - tc * tc)
        np.multiply(d_h_full * tc, o * (1.0 - o), out=da[:, 3 * n:])
        np.multiply(d_c * g, i * (1.0 - i), out=da[:, :n])
        np.multiply(d_c * cache.cells[t], f * (1.0 - f), out=da[:, n:2 * n])
        np.multiply(d_c * i, 1.0 - g * g, out=da[:, 2 * n:3 * n])
        d_c *= f
        d_h = mm(da, w_hh)
    flat = d_gates.reshape(steps * batch, 4 * n)
    d_bias = flat.sum(axis=0)
    grads = {W_IH: mm(flat.T, cache.x.reshape(steps * batch, -1)),
             W_HH: mm(flat.T, cache.hs[:-1].reshape(steps * batch, e)),
             W_HR: mm(d_h_all.reshape(steps * batch, e).T, cache.h_full.reshape(steps * batch, n)),
             B_IH: d_bias, B_HH: d_bias.copy()}
    return grads, mm(flat, w[W_IH]).reshape(steps, batch, -1)


class Dropout:
    """Inverted dropout with masks from a NumPy generator (PyTorch's arithmetic)."""

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        self.p, self.rng = p, rng

    def mask(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """keep / (1 - p) for a batch-major `shape`, or None when p is 0."""
        if self.p <= 0:
            return None
        keep = self.rng.random(shape, dtype=np.float32) >= np.float32(self.p)
        return keep.astype(np.float32) / np.float32(1.0 - self.p)


def _output_layer(w: Weights, h: np.ndarray, targets: np.ndarray, count: int,
                  grads: Weights) -> tuple[float, np.ndarray]:
    """Cross-entropy summed over rows of h (r, e) and its gradient (of the mean over
    `count` tokens); adds into grads' embedding and output bias."""
    z = mm(h, w[EMB].T)
    z += w[OUT_B]
    log_softmax(z)
    rows = np.arange(len(targets))
    loss = -float(z[rows, targets].sum(dtype=np.float64))
    np.exp(z, out=z)
    z[rows, targets] -= 1.0
    z *= np.float32(1.0 / count)
    grads[EMB] += mm(z.T, h)
    grads[OUT_B] += z.sum(axis=0)
    return loss, mm(z, w[EMB])


def loss_and_grads(w: Weights, ids: np.ndarray, pad_id: int, dropout: Dropout | None = None
                   ) -> tuple[float, int, Weights]:
    """(summed loss, target count, gradients of the mean loss) of a padded batch (B, W):
    inputs ids[:, :-1], targets ids[:, 1:], pad targets left out (PyTorch's cross_entropy
    with ignore_index)."""
    inputs, targets = ids[:, :-1], ids[:, 1:]
    batch, steps = inputs.shape
    e = w[EMB].shape[1]
    drop_in = dropout.mask((batch, steps, e)) if dropout else None
    drop_out = dropout.mask((batch, steps, e)) if dropout else None
    x = w[EMB][inputs.T]
    if drop_in is not None:
        x *= drop_in.transpose(1, 0, 2)
    cache = lstm_forward(w, x)
    hs = cache.hs[1:]
    if drop_out is not None:
        hs = hs * drop_out.transpose(1, 0, 2)
    flat_h = hs.reshape(steps * batch, e)
    flat_t = targets.T.reshape(-1)
    rows = np.flatnonzero(flat_t != pad_id)
    grads = {EMB: np.zeros_like(w[EMB]), OUT_B: np.zeros_like(w[OUT_B])}
    d_flat = np.zeros_like(flat_h)
    loss = 0.0
    for start in range(0, len(rows), OUTPUT_ROWS):
        block = rows[start:start + OUTPUT_ROWS]
        part, d_flat[block] = _output_layer(w, flat_h[block], flat_t[block], len(rows), grads)
        loss += part
    d_hs = d_flat.reshape(steps, batch, e)
    if drop_out is not None:
        d_hs *= drop_out.transpose(1, 0, 2)
    lstm_grads, d_x = lstm_backward(w, cache, d_hs)
    if drop_in is not None:
        d_x *= drop_in.transpose(1, 0, 2)
    np.add.at(grads[EMB], inputs.T.reshape(-1), d_x.reshape(-1, e))
    grads.update(lstm_grads)
    return loss, len(rows), grads
