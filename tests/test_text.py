"""Captions, the attribute rules, the tokenizer and the text encoder: the tokenizer round trip and unknown words, the
padding mask, caption determinism and splits, the pixel rules on hand-made images (and their thresholds against the
training split), prompt parsing, and a text encoder that ignores padding tokens."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import data as ddata
from diffjax import nets


def _image(value, side):
    """A 28x28 uint8 image with a centred ``side x side`` square of ``value``."""
    x = np.zeros((28, 28, 1), np.uint8)
    lo = (28 - side) // 2
    x[lo:lo + side, lo:lo + side] = value
    return x


# --- the attribute rules on hand-made images


def test_attribute_rules_on_hand_made_images():
    imgs = np.stack([_image(255, 27), _image(100, 27), _image(255, 3), _image(100, 3), _image(170, 18)])
    shade, area = ddata.attribute_measures(imgs)
    np.testing.assert_allclose(shade, [1.0, 100 / 255, 1.0, 100 / 255, 170 / 255], rtol=1e-6)
    np.testing.assert_allclose(area, np.array([27, 27, 3, 3, 18]) ** 2 / 784, rtol=1e-6)
    shades, sizes = ddata.measure_attributes(imgs)
    assert shades.tolist() == [1, -1, 1, -1, 0]   # 170/255 = 0.667 lies between the dark and light thresholds
    assert sizes.tolist() == [1, 1, -1, -1, 0]    # 324/784 = 0.413 lies between small and large
    # a black image has no ink: shade 0 (dark), area 0 (small); faint pixels below the ink threshold do not count
    shades, sizes = ddata.measure_attributes(np.stack([np.zeros((28, 28, 1), np.uint8), _image(40, 28)]))
    assert shades.tolist() == [-1, -1] and sizes.tolist() == [-1, -1]
    # (N, H, W) works as (N, H, W, 1)
    assert [a.tolist() for a in ddata.measure_attributes(imgs[..., 0])] == [[1, -1, 1, -1, 0], [1, 1, -1, -1, 0]]


def test_attribute_rules_reject_float_images():
    with pytest.raises(TypeError, match=r"images must be uint8 .* got dtype float32"):
        ddata.measure_attributes(np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match=r"images must be shaped \(N, H, W\) or \(N, H, W, 1\), got shape"):
        ddata.measure_attributes(np.zeros((2, 28, 28, 3), np.uint8))


@pytest.mark.skipif(not os.path.isdir(ddata.FASHION_MNIST_DIR), reason="Fashion-MNIST IDX files not installed")
def test_thresholds_are_the_training_split_tertiles():
    from diffjax.data import _captions as cap
    images, _ = ddata.load_fashion_mnist("train")
    shade, area = ddata.attribute_measures(images)
    np.testing.assert_allclose(np.quantile(shade, [1 / 3, 2 / 3]), [cap.DARK_BELOW, cap.LIGHT_ABOVE], atol=1e-3)
    np.testing.assert_allclose(np.quantile(area, [1 / 3, 2 / 3]), [cap.SMALL_BELOW, cap.LARGE_ABOVE], atol=1e-3)
    shades, sizes = ddata.measure_attributes(images)
    for codes in (shades, sizes):
        np.testing.assert_allclose([np.mean(codes == c) for c in (-1, 0, 1)], 1 / 3, atol=0.01)


# --- captions


def test_captions_are_deterministic_and_state_only_true_attributes():
    first = ddata.captions(7, -1, -1)
    assert ddata.captions(7, -1, -1) == first and len(first) == len(set(first))
    assert "a small dark sneaker" in first and "a photo of a sneaker" in first and "a dim trainer" in first
    assert "a dark small sneaker" not in first  # the held-out order
    for split in ddata.CAPTION_SPLITS:
        for label in range(10):
            for shade in (-1, 0, 1):
                for size in (-1, 0, 1):
                    for text in ddata.captions(label, shade, size, split=split):
                        p = ddata.parse_prompt(text)
                        assert p.label == label and p.shade in (None, shade) and p.size in (None, size), text
                        assert ddata.prompt_matches(p, label, shade, size)
    # an image with neither attribute gets no attribute word
    assert all(ddata.parse_prompt(t)[1:] == (None, None) for t in ddata.captions(3, 0, 0))
    assert "an ankle boot" in ddata.captions(9) and "a pair of jeans" in ddata.captions(1)


def test_heldout_split_is_new_sentences_of_training_words():
    train = {t for label in range(10) for s in (-1, 0, 1) for z in (-1, 0, 1) for t in ddata.captions(label, s, z)}
    held = {t for label in range(10) for s in (-1, 0, 1) for z in (-1, 0, 1)
            for t in ddata.captions(label, s, z, split="heldout")}
    assert held and not train & held
    assert {w for t in held for w in t.split()} <= {w for t in train for w in t.split()}
    assert "a photo of a dark small sneaker on a black background" in ddata.captions(7, -1, -1, split="heldout")


def test_sample_captions_same_seed_same_captions_other_seed_other_captions():
    labels, shades, sizes = np.arange(64) % 10, np.arange(64) % 3 - 1, (np.arange(64) // 3) % 3 - 1
    a = ddata.sample_captions(np.random.default_rng([0, 5]), labels, shades, sizes)
    b = ddata.sample_captions(np.random.default_rng([0, 5]), labels, shades, sizes)
    c = ddata.sample_captions(np.random.default_rng([1, 5]), labels, shades, sizes)
    assert a == b and a != c
    assert all(t in ddata.captions(int(l), int(s), int(z)) for t, l, s, z in zip(a, labels, shades, sizes))
    fits = ddata.match_matrix([ddata.parse_prompt(t) for t in a], labels, shades, sizes)
    assert fits.shape == (64, 64) and np.all(np.diag(fits))
    want = [[ddata.prompt_matches(ddata.parse_prompt(t), int(l), int(s), int(z)) for t in a]
            for l, s, z in zip(labels, shades, sizes)]
    np.testing.assert_array_equal(fits, want)


def test_parse_prompt():
    P = ddata.Prompt
    assert ddata.parse_prompt("A photo of a DARK small Sneaker.") == P(7, -1, -1)
    assert ddata.parse_prompt("an ankle boot") == P(9, None, None)
    assert ddata.parse_prompt("a bright boot") == P(9, 1, None)
    assert ddata.parse_prompt("a big running shoe") == P(7, None, 1)
    assert ddata.parse_prompt("a t-shirt") == P(0, None, None) and ddata.parse_prompt("a shirt") == P(6, None, None)
    assert ddata.parse_prompt("a dark light bag") == P(8, None, None)        # contradicts itself: no shade
    assert ddata.parse_prompt("a bag and a coat") == P(None, None, None)     # two classes: no class
    assert ddata.parse_prompt("") == P(None, None, None)
    assert ddata.prompt_matches(P(None, None, None), 3, -1, 1)
    assert not ddata.prompt_matches(P(3, 1, None), 3, -1, 1)
    assert len(ddata.class_prompts()) == 10
    assert [ddata.parse_prompt(p).label for p in ddata.class_prompts()] == list(range(10))
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'heldout'\), got 'test'"):
        ddata.captions(0, split="test")
    with pytest.raises(ValueError, match=r"shade must be -1, 0 or 1 .* got 2"):
        ddata.captions(0, 2, 0)
    with pytest.raises(ValueError, match=r"label must be an int in \[0, 10\), got 10"):
        ddata.captions(10)


# --- tokenizer


def test_tokenizer_round_trip_unknown_words_and_mask():
    tok = ddata.caption_tokenizer()
    assert tok.vocab[:4] == ddata.SPECIAL_TOKENS and tok.vocab_size == 4 + len(ddata.caption_words())
    texts = list(ddata.captions(9, -1, 1)[:20]) + list(ddata.captions(1, 1, -1, split="heldout")[:20])
    ids, mask = tok.encode(texts, max_length=16)
    assert ids.shape == mask.shape == (40, 16) and ids.dtype == np.int32 and mask.dtype == bool
    assert tok.decode(ids) == texts and tok.UNK not in ids
    assert np.all(ids[:, 0] == tok.BOS)
    lengths = np.array([len(t.split()) + 2 for t in texts])
    np.testing.assert_array_equal(mask.sum(1), lengths)
    np.testing.assert_array_equal(mask, np.arange(16)[None] < lengths[:, None])  # a prefix of real tokens
    np.testing.assert_array_equal(ids[np.arange(40), lengths - 1], tok.EOS)
    assert np.all(ids[~mask] == tok.PAD)
    # unknown words: UNK, listed by unknown_words; punctuation and case are normalised
    ids, mask = tok.encode("A Zebra-striped sneaker, please!", max_length=8)
    assert tok.decode(ids[0]) == "a <unk> sneaker <unk>" and tok.unknown_words("a zebra sneaker") == ["zebra"]
    assert ids[0, 2] == tok.UNK and ids[0, 4] == tok.UNK and mask[0].sum() == 6
    # the empty text: BOS EOS
    ids, mask = tok.encode([""], max_length=4)
    assert ids.tolist() == [[tok.BOS, tok.EOS, tok.PAD, tok.PAD]] and tok.decode(ids) == [""]


def test_tokenizer_errors():
    tok = ddata.caption_tokenizer()
    with pytest.raises(ValueError, match=r"text 'a b c' has 3 words; .* max_length=4 tokens \(allowed: at most 2 "):
        tok.encode(["a b c"], max_length=4)
    with pytest.raises(ValueError, match=r"max_length must be >= 2, got 1"):
        tok.encode(["a"], max_length=1)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 51\), got values in \[1, 99\]"):
        tok.decode(np.array([[1, 99]]))
    with pytest.raises(TypeError, match=r"text must be a str, got int 3"):
        tok.encode([3], max_length=4)
    with pytest.raises(ValueError, match=r"words must be distinct"):
        ddata.Tokenizer(("a", "a"))


# --- text encoder


def _encoder(pool="eos"):
    return nets.TextEncoder(vocab_size=20, max_length=8, width=16, depth=2, num_heads=2, pool=pool)


@pytest.mark.parametrize("pool", nets.TEXT_POOLINGS)
def test_text_encoder_ignores_padding_tokens(pool):
    model = _encoder(pool)
    ids = jnp.array([[1, 7, 9, 2, 0, 0, 0, 0], [1, 5, 2, 0, 0, 0, 0, 0], [1, 4, 4, 4, 4, 4, 4, 2]])
    mask = ids != 0
    params = model.init(jax.random.key(0), ids, mask)
    tokens, pooled = model.apply(params, ids, mask)
    assert tokens.shape == (3, 8, 16) and pooled.shape == (3, 16)
    assert np.all(np.isfinite(np.asarray(tokens))) and np.all(np.isfinite(np.asarray(pooled)))
    assert np.all(np.asarray(tokens)[~np.asarray(mask)] == 0)
    # other ids at the padded positions: the same outputs, token by token
    ids2 = jnp.where(mask, ids, jnp.array([[0, 0, 0, 0, 11, 3, 17, 19]] * 3))
    tokens2, pooled2 = model.apply(params, ids2, mask)
    np.testing.assert_allclose(tokens2, tokens, atol=1e-6)
    np.testing.assert_allclose(pooled2, pooled, atol=1e-6)
    # fewer padded positions (a shorter L): the same outputs on the real tokens
    tokens3, pooled3 = model.apply(params, ids[:2, :5], mask[:2, :5])
    np.testing.assert_allclose(tokens3, tokens[:2, :5], atol=1e-5)
    np.testing.assert_allclose(pooled3, pooled[:2], atol=1e-5)
    # a real token changes the pooled vector
    _, pooled4 = model.apply(params, ids.at[0, 1].set(8), mask)
    assert float(jnp.abs(pooled4[0] - pooled[0]).max()) > 1e-4


def test_text_encoder_pooling_by_hand():
    ids = jnp.array([[1, 7, 9, 2, 0, 0, 0, 0]])
    mask = ids != 0
    for pool, want in (("eos", lambda t: t[0, 3]), ("mean", lambda t: t[0, :4].mean(0))):
        model = _encoder(pool)
        params = model.init(jax.random.key(1), ids, mask)
        tokens, pooled = model.apply(params, ids, mask)
        np.testing.assert_allclose(pooled[0], want(tokens), rtol=1e-5, atol=1e-6)


def test_masked_attention_against_dropped_keys():
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    q = jax.random.normal(k1, (2, 3, 2, 4))
    k = jax.random.normal(k2, (2, 5, 2, 4))
    v = jax.random.normal(k3, (2, 5, 2, 4))
    key_mask = jnp.array([[True, True, False, True, False], [True] * 5])
    out = nets.masked_attention(q, k, v, key_mask)
    keep = np.array([0, 1, 3])
    np.testing.assert_allclose(out[0], nets.masked_attention(q[:1], k[:1, keep], v[:1, keep])[0], rtol=1e-5,
                               atol=1e-6)
    from diffjax.nets._attention import reference_attention
    np.testing.assert_allclose(out[1], reference_attention(q, k, v)[1], rtol=1e-5, atol=1e-6)
    none = nets.masked_attention(q, k, v, jnp.zeros((2, 5), bool))  # every key masked: finite (the mean of v)
    np.testing.assert_allclose(none, jnp.broadcast_to(v.mean(1, keepdims=True), none.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(width=10, num_heads=4), r"width=10 must be divisible by num_heads=4"),
    (dict(pool="cls"), r"pool must be one of \('eos', 'mean'\), got 'cls'"),
    (dict(vocab_size=0), r"vocab_size must be >= 1, got 0"),
])
def test_text_encoder_bad_fields(kw, match):
    args = dict(vocab_size=20, max_length=8, width=16, num_heads=2)
    with pytest.raises(ValueError, match=match):
        nets.TextEncoder(**{**args, **kw})


def test_text_encoder_bad_inputs():
    model = _encoder()
    ids = jnp.ones((1, 9), jnp.int32)
    with pytest.raises(ValueError, match=r"ids must be shaped \(batch, L\) with 1 <= L <= max_length=8, got shape "
                                         r"\(1, 9\)"):
        model.init(jax.random.key(0), ids, ids > 0)
    with pytest.raises(ValueError, match=r"mask must be shaped like ids \(1, 4\), got \(1, 3\)"):
        model.init(jax.random.key(0), ids[:, :4], ids[:, :3] > 0)


# --- the spatial transformer (cross-attention to text tokens)


def _spatial(x, ctx, mask, key=0):
    model = nets.SpatialTransformer(num_heads=2, norm_groups=4)
    params = model.init(jax.random.key(key), x, ctx, mask)
    # proj_out starts at zero (the block starts as the identity): give it weights to see the attention's effect
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jax.random.normal(jax.random.key(5), a.shape) * 0.2
        if "proj_out" in jax.tree_util.keystr(p) else a, params)
    return model, params


def test_spatial_transformer_shapes_identity_at_init_and_padding_mask():
    k1, k2 = jax.random.split(jax.random.key(3))
    x = jax.random.normal(k1, (2, 4, 4, 8))
    ctx = jax.random.normal(k2, (2, 5, 6))
    mask = jnp.array([[True, True, True, False, False], [True, True, True, True, True]])
    model = nets.SpatialTransformer(num_heads=2, norm_groups=4)
    fresh = model.init(jax.random.key(0), x, ctx, mask)
    np.testing.assert_array_equal(model.apply(fresh, x, ctx, mask), x)  # zero-initialised output projection
    model, params = _spatial(x, ctx, mask)
    apply = jax.jit(model.apply)
    out = apply(params, x, ctx, mask)
    assert out.shape == x.shape and np.all(np.isfinite(np.asarray(out)))
    assert float(jnp.abs(out - x).max()) > 1e-3
    # the padded context tokens change nothing: other values there, or dropping them
    ctx2 = ctx.at[0, 3:].set(100.0)
    np.testing.assert_allclose(apply(params, x, ctx2, mask), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(apply(params, x[:1], ctx[:1, :3], mask[:1, :3]), out[:1], rtol=1e-5, atol=1e-5)
    # a real context token does change the output
    assert float(jnp.abs(apply(params, x, ctx.at[0, 1].set(3.0), mask)[0] - out[0]).max()) > 1e-4
    # without a mask every token counts: the padded values then matter
    assert float(jnp.abs(apply(params, x, ctx2, None)[0] - out[0]).max()) > 1e-4


def test_spatial_transformer_takes_text_encoder_tokens():
    tok = ddata.caption_tokenizer()
    ids, mask = tok.encode(["a dark sneaker", "a photo of a pair of small light jeans"], max_length=16)
    enc = nets.TextEncoder(vocab_size=tok.vocab_size, max_length=16, width=12, depth=1, num_heads=2)
    tokens, _ = enc.apply(enc.init(jax.random.key(0), ids, mask), ids, mask)
    x = jax.random.normal(jax.random.key(1), (2, 3, 3, 8))
    model, params = _spatial(x, tokens, mask)
    out = model.apply(params, x, tokens, mask)
    assert out.shape == (2, 3, 3, 8) and np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("args,match", [
    (((2, 4, 4, 6), (2, 5, 6), (2, 5)), r"x's channels 6 must be divisible by num_heads=4"),
    (((2, 4, 4, 8), (3, 5, 6), (3, 5)), r"context must be shaped \(batch=2, M, D\), got shape \(3, 5, 6\)"),
    (((2, 4, 4, 8), (2, 5, 6), (2, 4)), r"context_mask must be shaped \(batch, M\) = \(2, 5\), got \(2, 4\)"),
    (((4, 4, 8), (2, 5, 6), (2, 5)), r"x must be shaped \(batch, H, W, C\), got shape \(4, 4, 8\)"),
])
def test_spatial_transformer_bad_inputs(args, match):
    x, ctx, mask = jnp.zeros(args[0]), jnp.zeros(args[1]), jnp.ones(args[2], bool)
    with pytest.raises(ValueError, match=match):
        nets.SpatialTransformer(num_heads=4, norm_groups=2).init(jax.random.key(0), x, ctx, mask)
    with pytest.raises(ValueError, match=r"num_heads must be >= 1, got 0"):
        nets.SpatialTransformer(num_heads=0)
