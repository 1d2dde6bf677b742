"""The numpy reference blocks, each against a small case checked by hand or by a naive loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from grokfetch.model import forward as F


@dataclass(frozen=True)
class TinyConfig:
    emb_size: int = 16
    key_size: int = 4
    num_q_heads: int = 4
    num_kv_heads: int = 2
    num_layers: int = 2
    num_experts: int = 4
    num_selected_experts: int = 2
    embedding_multiplier_scale: float = 78.38367176906169
    output_multiplier_scale: float = 0.5773502691896257
    attn_output_multiplier: float = 0.5
    attn_logit_softcap: float = 30.0
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    vocab_size: int = 32
    ffn: int = 24


def random_layer(cfg: TinyConfig, rng: np.random.Generator, scale: float = 0.3) -> F.LayerWeights:
    d, hd, gd, e, f = (
        cfg.emb_size,
        cfg.num_q_heads * cfg.key_size,
        cfg.num_kv_heads * cfg.key_size,
        cfg.num_experts,
        cfg.ffn,
    )

    def r(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return F.LayerWeights(
        rms_norm=1 + r(d),
        rms_norm_1=1 + r(d),
        rms_norm_2=1 + r(d),
        rms_norm_3=1 + r(d),
        query=r(d, hd),
        key=r(d, gd),
        value=r(d, gd),
        linear=r(hd, d),
        router=r(d, e) * 10,
        moe_linear=r(e, d, f),
        moe_linear_v=r(e, d, f),
        moe_linear_1=r(e, f, d),
    )


class ArrayWeights:
    """The loader interface over in-memory arrays."""

    def __init__(self, cfg: TinyConfig, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((cfg.vocab_size, cfg.emb_size)).astype(np.float32) * 0.02
        self.norm = (1 + rng.standard_normal(cfg.emb_size) * 0.1).astype(np.float32)
        self.layers = [random_layer(cfg, rng) for _ in range(cfg.num_layers)]

    def embedding_rows(self, tokens):
        return self.table[tokens]

    def embedding_blocks(self):
        for v0 in range(0, len(self.table), 10):
            yield v0, min(v0 + 10, len(self.table)), self.table[v0 : v0 + 10]

    def final_norm(self):
        return self.norm

    def layer(self, i):
        return self.layers[i]


# --- small blocks ---------------------------------------------------------------------------


def test_rms_norm_hand_case_uses_scale_as_is():
    x = np.array([[3.0, 4.0]], dtype=np.float32)  # mean square 12.5
    out = F.rms_norm(x, np.array([1.0, 2.0], dtype=np.float32), eps=0.0)
    np.testing.assert_allclose(out, [[3 / np.sqrt(12.5), 8 / np.sqrt(12.5)]], rtol=1e-6)
    # a zero scale zeroes the output (the scale is not 1 + scale)
    assert not F.rms_norm(x, np.zeros(2, np.float32), 1e-5).any()


def test_softmax_is_stable_and_sums_to_one():
    p = F.softmax(np.array([[1000.0, 1000.0, -1e30]], dtype=np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])


def test_gelu_is_the_tanh_approximation():
    x = np.array([-1.0, 0.0, 1.0, 3.0], dtype=np.float32)
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated by hand
    np.testing.assert_allclose(F.gelu(x), [-0.158808, 0.0, 0.841192, 2.996363], atol=1e-6)


def test_rotate_half_swaps_halves_not_pairs():
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    np.testing.assert_array_equal(F.rotate_half(x), [-3.0, -4.0, 1.0, 2.0])


def test_rope_at_position_zero_is_the_identity():
    x = np.random.default_rng(0).standard_normal((1, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(F.rope(x, np.array([0]), 10000), x)


def test_rope_preserves_norms_at_every_position():
    x = np.random.default_rng(1).standard_normal((50, 3, 8)).astype(np.float32)
    y = F.rope(x, np.arange(50), 10000)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_first_frequency_rotates_by_one_radian_per_position():
    # d = 2: one frequency, base**0 = 1, so position p rotates (x1, x2) by p radians
    x = np.array([[[1.0, 0.0]]] * 3, dtype=np.float32)
    y = F.rope(x, np.arange(3), 10000)
    np.testing.assert_allclose(y[:, 0, :], [[np.cos(p), np.sin(p)] for p in range(3)], atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 1, 1, 8)).astype(np.float32)

    def score(pq, pk):
        return float((F.rope(q, np.array([pq]), 10000) * F.rope(k, np.array([pk]), 10000)).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)


def test_soft_cap_bounds_and_small_values():
    x = np.array([-1e6, -100.0, 0.01, 100.0, 1e6], dtype=np.float32)
    y = F.soft_cap(x, 30.0)
    assert np.all(np.abs(y) <= 30.0)
    assert y[2] == pytest.approx(0.01, rel=1e-6)  # nearly linear near zero
    assert np.all(np.diff(y) >= 0)  # monotone (saturates to exactly 30 in float32)


def test_causal_mask():
    np.testing.assert_array_equal(F.causal_mask(3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_matmul_with_a_blocked_matrix_equals_the_dense_product():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((10, 6)).astype(np.float32)
    x = rng.standard_normal((3, 10)).astype(np.float32)

    class Blocks:
        shape = w.shape

        def blocks(self):
            for k0 in range(0, 10, 4):
                yield k0, min(k0 + 4, 10), w[k0 : k0 + 4]

    np.testing.assert_allclose(F.matmul(x, Blocks()), x @ w, rtol=1e-5, atol=1e-6)


# --- attention ------------------------------------------------------------------------------


def naive_attention(x, w, cfg):
    """Head by head, with the key/value heads repeated: the textbook form."""
    t, h, g, d = x.shape[0], cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
    q = F.rope((x @ w.query).reshape(t, h, d), np.arange(t), cfg.rope_base)
    k = F.rope((x @ w.key).reshape(t, g, d), np.arange(t), cfg.rope_base)
    v = (x @ w.value).reshape(t, g, d)
    out = np.zeros((t, h, d), np.float32)
    for head in range(h):
        kv = head // (h // g)
        for i in range(t):
            s = np.array([q[i, head] @ k[j, kv] for j in range(i + 1)]) * cfg.attn_output_multiplier
            p = F.softmax(30 * np.tanh(s / 30))
            out[i, head] = sum(p[j] * v[j, kv] for j in range(i + 1))
    return out.reshape(t, h * d) @ w.linear


def test_attention_matches_a_naive_per_head_loop():
    cfg = TinyConfig()
    w = random_layer(cfg, np.random.default_rng(4))
    x = np.random.default_rng(5).standard_normal((6, cfg.emb_size)).astype(np.float32)
    out, probs = F.attention(x, w, cfg)
    np.testing.assert_allclose(out, naive_attention(x, w, cfg), rtol=1e-4, atol=1e-5)
    assert probs.shape == (4, 6, 6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_attention_is_causal():
    cfg = TinyConfig()
    w = random_layer(cfg, np.random.default_rng(6))
    x = np.random.default_rng(7).standard_normal((5, cfg.emb_size)).astype(np.float32)
    changed = x.copy()
    changed[3:] += 10.0  # change the future
    out_a, probs = F.attention(x, w, cfg)
    out_b, _ = F.attention(changed, w, cfg)
    np.testing.assert_array_equal(out_a[:3], out_b[:3])
    assert not np.triu(probs, k=1).any()


def test_soft_cap_limits_attention_logits():
    cfg = TinyConfig(attn_output_multiplier=1e4)  # huge logits: the cap decides
    w = random_layer(cfg, np.random.default_rng(8))
    x = np.random.default_rng(9).standard_normal((4, cfg.emb_size)).astype(np.float32)
    _, probs = F.attention(x, w, cfg)
    # with |logits| < 30 no allowed key can get a probability below e^-60 of another's
    allowed = np.broadcast_to(F.causal_mask(4), probs.shape)
    assert probs[allowed].min() > np.exp(-60.0) / 4


# --- mixture of experts ---------------------------------------------------------------------


def test_top_k_gates_are_not_renormalised_and_ties_go_to_the_lower_index():
    probs = np.array([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    idx = F.top_k(probs, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 1]])
    gates = np.take_along_axis(probs, idx, axis=-1)
    np.testing.assert_allclose(gates, [[0.5, 0.3], [0.25, 0.25]])  # sums 0.8 and 0.5, kept


def test_moe_equals_the_dense_sum_over_selected_experts():
    cfg = TinyConfig()
    w = random_layer(cfg, np.random.default_rng(10))
    x = np.random.default_rng(11).standard_normal((7, cfg.emb_size)).astype(np.float32)
    m = F.moe(x, w, cfg)
    probs = F.softmax(x @ w.router)
    expected = np.zeros_like(x)
    for t in range(7):
        chosen = np.argsort(-probs[t])[:2]
        for e in chosen:
            ff = (F.gelu(x[t] @ w.moe_linear[e]) * (x[t] @ w.moe_linear_v[e])) @ w.moe_linear_1[e]
            expected[t] += probs[t, e] * ff
    np.testing.assert_allclose(m.out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.router_probs.sum(-1), 1.0, rtol=1e-6)
    assert m.expert_idx.dtype == np.int32
    assert all(len(set(row)) == 2 for row in m.expert_idx.tolist())


def test_moe_reads_only_the_experts_tokens_route_to():
    cfg = TinyConfig()
    base = random_layer(cfg, np.random.default_rng(12))
    touched: set[int] = set()

    class Recording:
        def __init__(self, stack):
            self.stack = stack

        def __getitem__(self, e):
            touched.add(e)
            return self.stack[e]

    router = np.zeros_like(base.router)
    router[:, 1] = 5.0  # every token prefers experts 1 and 3
    router[:, 3] = 4.0
    w = F.LayerWeights(
        **{
            **base.__dict__,
            "router": router,
            "moe_linear": Recording(base.moe_linear),
            "moe_linear_v": Recording(base.moe_linear_v),
            "moe_linear_1": Recording(base.moe_linear_1),
        }
    )
    x = np.abs(np.random.default_rng(13).standard_normal((5, cfg.emb_size))).astype(np.float32)
    m = F.moe(x, w, cfg)
    assert touched == {1, 3}
    np.testing.assert_array_equal(m.expert_idx, [[1, 3]] * 5)


# --- layer and model ------------------------------------------------------------------------


def test_decoder_layer_with_zero_post_norms_passes_its_input_through():
    cfg = TinyConfig()
    base = random_layer(cfg, np.random.default_rng(14))
    zero = np.zeros(cfg.emb_size, np.float32)
    w = F.LayerWeights(**{**base.__dict__, "rms_norm_1": zero, "rms_norm_3": zero})
    h = np.random.default_rng(15).standard_normal((3, cfg.emb_size)).astype(np.float32)
    np.testing.assert_array_equal(F.decoder_layer(h, w, cfg).h, h)


def test_model_wires_embedding_layers_norm_and_output_multiplier():
    cfg = TinyConfig()
    weights = ArrayWeights(cfg)
    tokens = [3, 1, 4, 1, 5]
    out = F.model(tokens, weights, cfg)
    h0 = weights.table[tokens] * np.float32(cfg.embedding_multiplier_scale)
    np.testing.assert_array_equal(out.h0, h0)
    h = h0
    for i in range(cfg.num_layers):
        h = F.decoder_layer(h, weights.layer(i), cfg).h
    np.testing.assert_array_equal(out.layers[-1].h, h)
    hn = F.rms_norm(h, weights.norm, cfg.rms_norm_eps)
    np.testing.assert_allclose(
        out.logits, hn @ weights.table.T * cfg.output_multiplier_scale, rtol=1e-5, atol=1e-6
    )
    assert out.logits.shape == (5, cfg.vocab_size)
