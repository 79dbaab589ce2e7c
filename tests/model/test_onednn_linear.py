"""The oneDNN fp32 linear path: values and gradients against float64 autograd, and when it is (not) taken."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from lmstack.device import onednn_fp32_faster
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.model.onednn_linear import MIN_MULTIPLY_ADDS, linear, matmul_nn, matmul_nt, matmul_tn


@contextlib.contextmanager
def mkldnn_enabled(enabled: bool):
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


needs_onednn = pytest.mark.skipif(not onednn_fp32_faster(), reason="fp32 matmuls use oneDNN on AMD AVX-512 CPUs only")


def reference_grads(x, weight, bias, grad_out):
    """F.linear's output and gradients in float64: the independent reference."""
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias) if t is not None]
    out = F.linear(*leaves)
    out.backward(grad_out.double())
    return out, [t.grad for t in leaves]


@needs_onednn
@pytest.mark.parametrize("shape", [(96, 64), (3, 40, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("out_features", [48, 200])  # both weight-gradient layouts: out < in and out > in
def test_values_and_gradients_match_float64(shape, with_bias, out_features):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    weight = torch.randn(out_features, shape[-1], generator=gen, requires_grad=True)
    bias = torch.randn(out_features, generator=gen, requires_grad=True) if with_bias else None
    grad_out = torch.randn(*shape[:-1], out_features, generator=gen)
    with pytest.MonkeyPatch.context() as patch:  # small enough for F.linear by default: force the oneDNN path
        patch.setattr("lmstack.model.onednn_linear.MIN_MULTIPLY_ADDS", 0)
        out = linear(x, weight, bias)
    assert out.grad_fn.name() == "_OneDnnLinearBackward"
    out.backward(grad_out)
    expected, expected_grads = reference_grads(x, weight, bias, grad_out)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
    for leaf, grad in zip([t for t in (x, weight, bias) if t is not None], expected_grads):
        torch.testing.assert_close(leaf.grad.double(), grad, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_matmul_helpers_match_torch():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 32, generator=gen), torch.randn(48, 32, generator=gen)
    torch.testing.assert_close(matmul_nt(a, b), a @ b.t())
    torch.testing.assert_close(matmul_nn(a, b.t().contiguous()), a @ b.t())
    rows, grads = torch.randn(64, 32, generator=gen), torch.randn(64, 128, generator=gen)
    torch.testing.assert_close(matmul_tn(grads, rows), grads.t() @ rows)  # out rows > in: transposed layout
    torch.testing.assert_close(matmul_tn(rows, grads), rows.t() @ grads)


def test_small_products_autocast_and_disabled_onednn_take_f_linear():
    x = torch.randn(4, 32, requires_grad=True)
    weight = torch.randn(16, 32, requires_grad=True)
    assert 4 * 32 * 16 < MIN_MULTIPLY_ADDS
    assert linear(x, weight).grad_fn.name() == "MmBackward0"
    big_x, big_weight = torch.randn(256, 256, requires_grad=True), torch.randn(256, 256, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(big_x, big_weight).dtype == torch.bfloat16  # autocast saw F.linear and cast it
    with mkldnn_enabled(False):
        assert linear(big_x, big_weight).grad_fn.name() == "MmBackward0"


@needs_onednn
def test_no_grad_path_equals_f_linear():
    gen = torch.Generator().manual_seed(2)
    x, weight = torch.randn(2, 64, 256, generator=gen), torch.randn(192, 256, generator=gen)
    bias = torch.randn(192, generator=gen)
    with torch.no_grad():
        out = linear(x, weight, bias)
    assert out.shape == (2, 64, 192)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_training_steps_match_the_mkl_path(arch):
    """Three SGD steps of a GPT: losses and weights with the oneDNN path equal those with oneDNN turned off.
    (SGD, not Adam: Adam's normalisation turns a rounding difference in a near-zero gradient into a full step.)"""
    cfg = ModelConfig(arch=arch, vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128)
    batch = torch.randint(0, 512, (4, 65), generator=torch.Generator().manual_seed(3))

    def train(onednn: bool):
        model = build_model(cfg, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        with mkldnn_enabled(onednn):
            for _ in range(3):
                _, loss = model(batch[:, :-1], batch[:, 1:])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
        return losses, model.state_dict()

    (losses, weights), (mkl_losses, mkl_weights) = train(True), train(False)
    assert losses == pytest.approx(mkl_losses, rel=1e-5)
    for name, value in weights.items():
        torch.testing.assert_close(value, mkl_weights[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_torch_compile_traces_the_model_in_one_graph(arch):
    """The path's checks must not break dynamo's graph: traced code sees F.linear (inductor lowers it itself)."""
    import torch._dynamo

    cfg = ModelConfig(arch=arch, vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128)
    model = build_model(cfg, seed=0)
    batch = torch.randint(0, 512, (4, 64))
    explanation = torch._dynamo.explain(model)(batch, batch)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_functorch_transforms_see_f_linear():
    """torch.func needs setup_context, which a first-order oneDNN backward does not have: it gets F.linear."""
    x, weight = torch.randn(256, 256), torch.randn(256, 256)
    grad = torch.func.grad(lambda w: linear(x, w).square().sum())(weight)
    torch.testing.assert_close(grad, 2 * (x @ weight.t()).t() @ x, rtol=1e-4, atol=1e-2)
