"""reconstruct: GPTQ rounding and SparseGPT pruning against nearest rounding and magnitude pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepcompress_cli.reconstruct import Grid, bias_shift, factor, layer_error, reconstruct, uniform_step

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RNG = np.random.default_rng(0)


def correlated_inputs(n: int, k: int, seed: int = 0, groups: int = 1) -> np.ndarray:
    """(G, n, K) inputs with strongly correlated, unequally scaled features."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((groups, k, k)) * np.logspace(0, -1.5, k)[None, None] + 0.5
    return np.matmul(rng.standard_normal((groups, n, k)), mix) + 0.3


def hessian(X: np.ndarray) -> np.ndarray:
    return np.matmul(X.transpose(0, 2, 1), X) / X.shape[1]


def uniform_grid(W: np.ndarray, levels: int) -> Grid:
    return Grid(np.abs(W).max(-1) / levels, levels)


def test_identity_hessian_is_nearest_rounding():
    W = RNG.standard_normal((2, 5, 12))
    grid = uniform_grid(W, 7)
    rtn = reconstruct(W, None, grid)
    gptq = reconstruct(W, np.broadcast_to(np.eye(12), (2, 12, 12)), grid, damp=0.0)
    np.testing.assert_allclose(gptq.weights, rtn.weights)
    np.testing.assert_array_equal(gptq.codes, rtn.codes)
    np.testing.assert_allclose(rtn.weights, np.clip(np.rint(W / grid.step[..., None]), -7, 7) * grid.step[..., None])
    assert np.all(np.abs(rtn.codes) <= 7)


@pytest.mark.parametrize("levels", [1, 3, 7])
def test_gptq_error_is_below_nearest_rounding(levels):
    wins, ratios = 0, []
    for seed in range(6):
        X = correlated_inputs(400, 32, seed)
        H = hessian(X)
        W = np.random.default_rng(seed + 100).standard_normal((1, 16, 32))
        grid = uniform_grid(W, levels)
        rtn = layer_error(W, reconstruct(W, None, grid).weights, H)
        gptq_result = reconstruct(W, H, grid, block=8)
        gptq = layer_error(W, gptq_result.weights, H)
        np.testing.assert_allclose(gptq_result.weights, gptq_result.codes * grid.step[..., None])
        wins += gptq < rtn
        ratios.append(gptq / rtn)
    assert wins == 6 and np.mean(ratios) < 0.7


def test_blocks_and_act_order_do_not_change_the_algorithm():
    X = correlated_inputs(300, 40, 3)
    H = hessian(X)
    W = RNG.standard_normal((1, 6, 40))
    grid = uniform_grid(W, 7)
    a, b = reconstruct(W, H, grid, block=128), reconstruct(W, H, grid, block=7)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-9)
    ordered = reconstruct(W, H, grid, act_order=True)
    np.testing.assert_array_equal(reconstruct(W, factor(H, act_order=True), grid).weights, ordered.weights)
    np.testing.assert_array_equal(reconstruct(W, factor(H), grid, density=0.5).weights,
                                  reconstruct(W, H, grid, density=0.5).weights)
    assert layer_error(W, ordered.weights, H) < layer_error(W, reconstruct(W, None, grid).weights, H)


def test_codebook_grid_outputs_only_codebook_values():
    X = correlated_inputs(300, 20, 1)
    H = hessian(X)
    W = RNG.standard_normal((1, 8, 20))
    codebook = np.sort(RNG.standard_normal(6))
    result = reconstruct(W, H, Grid(None, None, codebook))
    assert np.isin(result.weights, codebook).all()
    np.testing.assert_array_equal(codebook[result.codes], result.weights)
    rtn = reconstruct(W, None, Grid(None, None, codebook))
    np.testing.assert_array_equal(rtn.weights, codebook[np.abs(W[..., None] - codebook).argmin(-1)])
    assert layer_error(W, result.weights, H) < layer_error(W, rtn.weights, H)
    # channel-scaled codebook: value = codebook x row scale
    scale = np.abs(W).max(-1)
    scaled = reconstruct(W, H, Grid(scale, None, codebook / np.abs(codebook).max()))
    np.testing.assert_allclose(scaled.weights, (codebook / np.abs(codebook).max())[scaled.codes] * scale[..., None])


@pytest.mark.parametrize("density", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("mask", ["layer", "row"])
def test_density_keeps_the_exact_count(density, mask):
    W = RNG.standard_normal((3, 5, 24))
    H = hessian(correlated_inputs(200, 24, 2, groups=3))
    for h in (H, None):
        result = reconstruct(W, h, uniform_grid(W, 7), density=density, block=10, mask=mask)
        expected = W.size - round((1 - density) * W.size) if (mask == "layer" or h is None) \
            else W.size - 15 * round(round((1 - density) * W.size) / 15)
        assert result.keep.sum() == expected
        assert np.all(result.weights[~result.keep] == 0) and np.all(result.codes[~result.keep] == 0)
    if mask == "row":
        kept = reconstruct(W, H, None, density=density, mask=mask).keep.sum(-1)
        assert np.all(kept == kept.flat[0])


def test_data_free_pruning_is_magnitude_pruning():
    W = RNG.standard_normal((1, 10, 30))
    result = reconstruct(W, None, None, density=0.3)
    threshold = np.sort(np.abs(W).reshape(-1))[210 - 1]
    np.testing.assert_array_equal(result.keep, np.abs(W) > threshold)
    np.testing.assert_array_equal(result.weights, np.where(result.keep, W, 0))


@pytest.mark.parametrize("mask", ["layer", "row"])
def test_sparsegpt_beats_magnitude_pruning(mask):
    for seed in range(4):
        H = hessian(correlated_inputs(500, 48, seed))
        W = np.random.default_rng(seed).standard_normal((1, 20, 48))
        for density, grid in ((0.5, None), (0.3, None), (0.5, uniform_grid(W, 7))):
            sparse = reconstruct(W, H, grid, density=density, mask=mask, block=16)
            magnitude = reconstruct(W, None, grid, density=density)
            assert layer_error(W, sparse.weights, H) < 0.8 * layer_error(W, magnitude.weights, H)


def test_bias_shift_removes_the_mean_output_shift():
    X = correlated_inputs(2000, 16, 5)[0] + 1.0  # non-zero mean inputs
    W = RNG.standard_normal((1, 4, 16))
    H, mean = hessian(X[None]), X.mean(0)[None]
    result = reconstruct(W, H, uniform_grid(W, 1))
    shift = bias_shift(W, result.weights, mean)
    before = X @ W[0].T
    after = X @ result.weights[0].T
    assert np.abs((before - after).mean(0)).max() > 1e-3
    np.testing.assert_allclose((after + shift[0]).mean(0), before.mean(0), atol=1e-10)
    # and the squared error falls by the squared mean shift
    assert ((after + shift[0] - before) ** 2).mean() < ((after - before) ** 2).mean()


def test_groups_vectorized_equals_a_loop_over_groups():
    G = 7
    H = hessian(correlated_inputs(100, 9, 4, groups=G))
    W = RNG.standard_normal((G, 2, 9))
    grid = uniform_grid(W, 3)
    for density in (1.0, 0.5):
        together = reconstruct(W, H, grid, density=density, mask="row")
        for g in range(G):
            alone = reconstruct(W[g:g + 1], H[g:g + 1], Grid(grid.step[g:g + 1], 3), density=density, mask="row")
            np.testing.assert_allclose(together.weights[g], alone.weights[0], atol=1e-12)
            np.testing.assert_array_equal(together.keep[g], alone.keep[0])


def test_degenerate_layers():
    grid = Grid(np.ones((1, 1)), 7)
    one = np.array([[[0.3]]])
    assert reconstruct(one, np.array([[[2.0]]]), grid).weights.shape == (1, 1, 1)  # K = R = 1
    assert reconstruct(one, np.zeros((1, 1, 1)), grid).weights[0, 0, 0] == 0.0  # dead input
    zeros = np.zeros((2, 3, 5))
    constant = np.ones((2, 5, 5))  # rank 1: every input the same constant
    result = reconstruct(zeros, constant, Grid(np.zeros((2, 3)), 7), density=0.5)
    assert np.all(result.weights == 0) and np.all(np.isfinite(result.weights))
    W = RNG.standard_normal((2, 3, 5))
    result = reconstruct(W, constant, uniform_grid(W, 7), density=0.6, damp=0.0)
    assert np.all(np.isfinite(result.weights))
    nan_h = np.full((2, 5, 5), np.nan)
    assert np.all(np.isfinite(reconstruct(W, nan_h, uniform_grid(W, 7)).weights))
    # dead columns go first when pruning, for free
    H = hessian(correlated_inputs(100, 5, 0))
    H[:, 2, :] = H[:, :, 2] = 0
    pruned = reconstruct(W[:1], H, None, density=0.8)
    assert not pruned.keep[0, :, 2].any()
    # many groups at once (depthwise-like)
    Wd = RNG.standard_normal((3000, 1, 9))
    Hd = hessian(correlated_inputs(30, 9, 1, groups=3000))
    assert reconstruct(Wd, Hd, uniform_grid(Wd, 7)).weights.shape == (3000, 1, 9)


def test_uniform_step_search_never_loses_to_the_full_range():
    W = RNG.standard_t(3, (2, 6, 50))  # heavy tails: clipping pays
    H = hessian(correlated_inputs(200, 50, 0, groups=2))
    for h in (None, H):
        step = uniform_step(W, 7, h)
        top = np.abs(W).max(-1) / 7
        assert np.all(step <= top + 1e-15) and np.all(step >= 0.4 * top - 1e-15)
        weight = 1 if h is None else np.diagonal(H, axis1=1, axis2=2)[:, None, :]
        cost = lambda s: (weight * (W - Grid(s, 7).round(W)[0]) ** 2).sum(-1)  # noqa: E731
        assert np.all(cost(step) <= cost(top) + 1e-12) and cost(step).sum() < cost(top).sum()
    assert np.all(uniform_step(np.zeros((1, 2, 3)), 7) == 0)


def test_layer_error_is_the_output_mse():
    X = correlated_inputs(300, 10, 0)
    W, W_hat = RNG.standard_normal((1, 4, 10)), RNG.standard_normal((1, 4, 10))
    mse_sum = ((X[0] @ (W - W_hat)[0].T) ** 2).sum(1).mean()
    assert layer_error(W, W_hat, hessian(X)) == pytest.approx(mse_sum)
    assert layer_error(W, W_hat, None) == pytest.approx(((W - W_hat) ** 2).sum())


def mnist(name: str, count: int):
    data = np.load(SHARED / "data" / f"{name}.npz")
    return ((data["images"][:count].astype(np.float32) / 255 - 0.5) / 0.5)[:, None], data["labels"][:count]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "models" / "mnist_cnn.onnx").exists(), reason="needs ../shared")
def test_mnist_cnn_4_bit_per_channel_gptq_vs_nearest_rounding():
    """4-bit per channel (step = max|w_row| / 7): GPTQ keeps test top-1 at least as well as RTN."""
    from deepcompress_cli import calibration
    from deepcompress_cli.files import read_model
    from deepcompress_cli.interp.graph import Interpreter
    from deepcompress_cli.tensors import Tensor

    model = SHARED / "models" / "mnist_cnn.onnx"
    package = read_model(str(model))
    stats = calibration.collect(package, {"input": mnist("mnist_train10k", 128)[0]}, batch=128)
    assert set(stats) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    x, labels = mnist("mnist_test", 600)

    def accuracy(H: bool) -> float:
        p = read_model(str(model))
        for i, t in enumerate(p.tensors):
            if t.name in stats:
                s = stats[t.name]
                W = calibration.to_matrix(t.decode(), s)
                result = reconstruct(W, s.hessian if H else None, Grid(np.abs(W).max(-1) / 7, 7))
                p.tensors[i] = Tensor.raw(t.name, calibration.from_matrix(result.weights, t.shape, s)
                                          .astype(np.float32), t.kind, t.op)
        out = Interpreter(p).run({"input": x})[0]
        return float((out.argmax(1) == labels).mean())

    rtn, gptq = accuracy(False), accuracy(True)
    print(f"mnist_cnn 4-bit per channel, first 600 test images: RTN {rtn:.3f}, GPTQ {gptq:.3f}")
    assert gptq >= rtn - 0.002 and gptq >= 0.975
