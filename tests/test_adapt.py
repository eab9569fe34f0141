"""diffjax.adapt: LoRA on parameter trees (Hu et al. 2021) against the algebra it stands for."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import adapt


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(6, (3, 3), name="conv")(x)
        h = nn.silu(h).mean((1, 2))
        h = nn.Dense(5, name="attn_q")(h)
        return nn.Dense(3, name="out")(nn.silu(h))


@pytest.fixture(scope="module")
def model():
    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 2))
    params = Tiny().init(jax.random.key(1), x)["params"]
    return Tiny(), params, x


def _finite(tree):
    return all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(tree))


def _nonzero_up(adapter, key):
    """The adapter after some training: ``up`` no longer zero."""
    keys = iter(jax.random.split(key, 2 * len(adapter.layers)))
    layers = {p: {"down": v["down"], "up": 0.3 * jax.random.normal(next(keys), v["up"].shape)}
              for p, v in adapter.layers.items()}
    return adapt.LoraAdapter(layers=layers, alpha=adapter.alpha, rank=adapter.rank)


def test_default_targets_are_every_dense_and_conv_kernel(model):
    _, params, _ = model
    assert adapt.lora_kernel_paths(params) == ["attn_q/kernel", "conv/kernel", "out/kernel"]
    assert adapt.lora_kernel_paths(params, ["*attn*"]) == ["attn_q/kernel"]
    a = adapt.lora_init(jax.random.key(2), params, rank=2)
    assert set(a.layers) == {"attn_q/kernel", "conv/kernel", "out/kernel"}
    assert a.layers["conv/kernel"]["down"].shape == (3 * 3 * 2, 2) and a.layers["conv/kernel"]["up"].shape == (2, 6)
    assert adapt.lora_num_params(a) == sum(v["down"].size + v["up"].size for v in a.layers.values())
    assert all(float(jnp.abs(v["up"]).max()) == 0.0 for v in a.layers.values())
    assert all(float(jnp.abs(v["down"]).max()) > 0.0 for v in a.layers.values())


def test_fresh_adapter_and_scale_zero_leave_outputs_bit_identical(model):
    net, params, x = model
    base = net.apply({"params": params}, x)
    fresh = adapt.lora_init(jax.random.key(3), params, rank=2)
    assert np.array_equal(net.apply({"params": adapt.lora_merge(params, fresh)}, x), base)
    trained = _nonzero_up(fresh, jax.random.key(4))
    assert np.array_equal(net.apply({"params": adapt.lora_merge(params, trained, scale=0.0)}, x), base)
    moved = net.apply({"params": adapt.lora_merge(params, trained)}, x)
    assert _finite(moved) and not np.allclose(moved, base)


def test_merged_kernel_is_w_plus_scaled_low_rank_product_and_unmerge_restores(model):
    _, params, _ = model
    a = _nonzero_up(adapt.lora_init(jax.random.key(5), params, rank=2, alpha=6.0), jax.random.key(6))
    merged = adapt.lora_merge(params, a, scale=0.5)
    for path, lr in a.layers.items():
        mod = path.split("/")[0]
        w = np.asarray(params[mod]["kernel"])
        want = w + 0.5 * (6.0 / 2) * (np.asarray(lr["down"]) @ np.asarray(lr["up"])).reshape(w.shape)
        np.testing.assert_allclose(merged[mod]["kernel"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(merged[mod]["bias"], params[mod]["bias"])  # biases untouched
    back = adapt.lora_merge(merged, a, scale=-0.5)
    assert _finite(back)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_conv_update_is_a_rank_r_conv_then_a_one_by_one_conv(model):
    """``conv(x, W + s dW) = conv(x, W) + s * conv1x1(conv(x, down), up)``: the LoRA of a conv kernel."""
    _, params, x = model
    a = _nonzero_up(adapt.lora_init(jax.random.key(7), params, rank=2, targets=["conv/*"]), jax.random.key(8))
    lr = a.layers["conv/kernel"]
    conv = lambda w, h: jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    w = params["conv"]["kernel"]
    merged = adapt.lora_merge(params, a)["conv"]["kernel"]
    low = conv(lr["down"].reshape(3, 3, 2, 2), x)  # to r channels
    want = conv(w, x) + jnp.einsum("nhwr,ro->nhwo", low, lr["up"])
    got = conv(merged, x)
    assert _finite(got)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_adapters_combine_by_merging_one_after_another(model):
    _, params, _ = model
    a1 = _nonzero_up(adapt.lora_init(jax.random.key(9), params, rank=1), jax.random.key(10))
    a2 = _nonzero_up(adapt.lora_init(jax.random.key(11), params, rank=2, targets=["out/*"]), jax.random.key(12))
    both = adapt.lora_merge(adapt.lora_merge(params, a1, scale=0.7), a2, scale=1.5)
    d1 = jax.tree.map(lambda m, p: m - p, adapt.lora_merge(params, a1, scale=0.7), params)
    d2 = jax.tree.map(lambda m, p: m - p, adapt.lora_merge(params, a2, scale=1.5), params)
    want = jax.tree.map(lambda p, u, v: p + u + v, params, d1, d2)
    for got, w in zip(jax.tree.leaves(both), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-6)


def test_training_updates_adapter_leaves_only(model):
    """The optimizer holds state for the adapter alone; the base stays bit-identical; the first step moves ``up``
    (``down``'s gradient is zero while ``up`` is), the second moves ``down`` too."""
    net, params, x = model
    target = jnp.ones((x.shape[0], 3))
    adapter = adapt.lora_init(jax.random.key(13), params, rank=2)
    opt = optax.adam(1e-2)
    state = opt.init(adapter.layers)
    assert sum(a.size for a in jax.tree.leaves(state)) == 2 * adapt.lora_num_params(adapter) + 1  # mu, nu, count

    def loss(layers):
        a = adapt.LoraAdapter(layers=layers, alpha=adapter.alpha, rank=adapter.rank)
        return jnp.mean((net.apply({"params": adapt.lora_merge(params, a)}, x) - target) ** 2)

    frozen = jax.tree.map(np.asarray, params)
    history = [adapter.layers]
    for _ in range(2):
        value, grads = jax.value_and_grad(loss)(history[-1])
        assert np.isfinite(float(value)) and _finite(grads)
        updates, state = opt.update(grads, state)
        history.append(optax.apply_updates(history[-1], updates))
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(frozen)):
        assert np.array_equal(got, want)
    p = "out/kernel"
    assert np.array_equal(history[1][p]["down"], history[0][p]["down"])
    assert not np.array_equal(history[1][p]["up"], history[0][p]["up"])
    assert not np.array_equal(history[2][p]["down"], history[1][p]["down"])
    assert float(loss(history[2])) < float(loss(history[0]))


def test_bad_settings_and_another_base_are_rejected(model):
    _, params, _ = model
    with pytest.raises(ValueError, match="rank must be"):
        adapt.lora_init(jax.random.key(0), params, rank=0)
    with pytest.raises(ValueError, match="matches no Dense or Conv kernel"):
        adapt.lora_init(jax.random.key(0), params, rank=1, targets=["*bias*"])
    with pytest.raises(ValueError, match="alpha"):
        adapt.lora_init(jax.random.key(0), params, rank=1, alpha=-1.0)
    a = adapt.lora_init(jax.random.key(0), params, rank=1)
    other = dict(params, out={"kernel": jnp.zeros((5, 4)), "bias": jnp.zeros(4)})
    with pytest.raises(ValueError, match="another base model"):
        adapt.lora_merge(other, a)
    with pytest.raises(ValueError, match="another base model"):
        adapt.lora_merge({k: v for k, v in params.items() if k != "conv"}, a)


# ------------------------------------------------------------------ textual inversion, DreamBooth's prior loss


@pytest.fixture(scope="module")
def text_encoder():
    from diffjax.data import caption_tokenizer
    from diffjax.nets import TextEncoder
    tok = caption_tokenizer()
    enc = TextEncoder(vocab_size=tok.vocab_size, max_length=8, width=16, depth=1, num_heads=2)
    ids, mask = tok.encode(["a dark sneaker"], max_length=8)
    params = enc.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask))["params"]
    return tok, enc, params


def test_textual_inversion_extends_the_table_and_leaves_old_words_unchanged(text_encoder):
    from diffjax.data import Tokenizer
    from diffjax.nets import TextEncoder
    tok, enc, params = text_encoder
    path = ("token_embed", "embedding")
    shoe = tok.encode(["shoe"], max_length=3)[0][0, 1]
    rows = adapt.ti_init(jax.random.key(1), params, path, 1, init_ids=[int(shoe)])
    np.testing.assert_array_equal(rows[0], params["token_embed"]["embedding"][shoe])  # the descriptor's row
    new_tok = Tokenizer(tok.words + ("zwx",))
    big = TextEncoder(vocab_size=new_tok.vocab_size, max_length=8, width=16, depth=1, num_heads=2)
    merged = adapt.ti_merge(params, path, rows)
    assert merged["token_embed"]["embedding"].shape == (tok.vocab_size + 1, 16)
    ids, mask = (jnp.asarray(a) for a in tok.encode(["a dark sneaker", "a light bag"], max_length=8))
    old = enc.apply({"params": params}, ids, mask)
    new = big.apply({"params": merged}, ids, mask)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):  # prompts without the new word: unchanged
        assert np.array_equal(a, b)
    ids_z, mask_z = (jnp.asarray(a) for a in new_tok.encode(["a dark zwx"], max_length=8))
    ids_s, mask_s = (jnp.asarray(a) for a in new_tok.encode(["a dark shoe"], max_length=8))
    zwx, shoe_out = (big.apply({"params": merged}, i, m) for i, m in ((ids_z, mask_z), (ids_s, mask_s)))
    for a, b in zip(jax.tree.leaves(zwx), jax.tree.leaves(shoe_out)):  # initialised as "shoe": the same features
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no 'embed'"):
        adapt.ti_init(jax.random.key(1), params, ("token_embed", "embed"), 1)
    with pytest.raises(ValueError, match="rows must be shaped"):
        adapt.ti_merge(params, path, jnp.zeros((1, 8)))


def test_textual_inversion_learns_a_word_with_everything_else_frozen(text_encoder):
    """Gal et al.'s objective on a stand-in: find the new word's embedding whose prompt features match those of a
    known word ("sneaker"), the encoder frozen. Only the row moves; the prompt's features approach the target."""
    from diffjax.data import Tokenizer
    from diffjax.nets import TextEncoder
    tok, _, params = text_encoder
    path = ("token_embed", "embedding")
    new_tok = Tokenizer(tok.words + ("zwx",))
    big = TextEncoder(vocab_size=new_tok.vocab_size, max_length=8, width=16, depth=1, num_heads=2)
    ids_z, mask_z = (jnp.asarray(a) for a in new_tok.encode(["a zwx"], max_length=8))
    ids_t, mask_t = (jnp.asarray(a) for a in new_tok.encode(["a sneaker"], max_length=8))
    target = big.apply({"params": adapt.ti_merge(params, path, jnp.zeros((1, 16)))}, ids_t, mask_t)[1]

    def loss(rows):
        return jnp.mean((big.apply({"params": adapt.ti_merge(params, path, rows)}, ids_z, mask_z)[1] - target) ** 2)

    rows = adapt.ti_init(jax.random.key(2), params, path, 1)
    opt = optax.adam(0.05)
    state = opt.init(rows)
    start = float(loss(rows))

    @jax.jit
    def step(rows, state):
        updates, state = opt.update(jax.grad(loss)(rows), state)
        return optax.apply_updates(rows, updates), state

    for _ in range(150):
        rows, state = step(rows, state)
    end = float(loss(rows))
    assert np.isfinite(end) and end < 0.05 * start


def test_prior_preservation_loss_is_instance_plus_weighted_prior():
    def loss_fn(params, key, batch):  # a stand-in diffusion loss with noise from the key
        noise = jax.random.normal(key, batch.shape)
        return jnp.mean((params * batch - noise) ** 2), {}

    batch = {"instance": jnp.arange(4.0), "prior": jnp.ones(4) * 2.0}
    key = jax.random.key(3)
    total, aux = adapt.prior_preservation_loss(loss_fn, 0.5)(1.5, key, batch)
    k1, k2 = jax.random.split(key)
    inst, prior = loss_fn(1.5, k1, batch["instance"])[0], loss_fn(1.5, k2, batch["prior"])[0]
    assert np.isfinite(float(total))
    np.testing.assert_allclose(total, inst + 0.5 * prior, rtol=1e-6)
    np.testing.assert_allclose([aux["instance_loss"], aux["prior_loss"]], [inst, prior], rtol=1e-6)
    assert float(adapt.prior_preservation_loss(loss_fn, 0.0)(1.5, key, batch)[0]) == pytest.approx(float(inst))
    with pytest.raises(ValueError, match="weight"):
        adapt.prior_preservation_loss(loss_fn, -1.0)
