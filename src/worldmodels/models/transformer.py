"""Causal transformer dynamics: a world-model memory M with a sliding attention window and a KV cache.

A decoder-only transformer (Vaswani et al. 2017, Sec. 3) over the sequence of (z_t, a_t) tokens, as in
the transformer world models TransDreamer (Chen et al. 2022) and IRIS (Micheli et al. 2023), with the
MDN-RNN's prediction head (Ha & Schmidhuber 2018, Sec. 2.2), so it implements
``worldmodels.models.dynamics.Dynamics`` and runs wherever an MDN-RNN runs:

* token x_t = W_in [z_t, a_t] + b_in, float32 (D,) with D = ``hidden_size`` (d_model);
* L pre-LayerNorm blocks (the "pre-LN" placement of Xiong et al. 2020, as in GPT-2):
  x <- x + W_o MHA(LN(x)), x <- x + MLP(LN(x)) with MLP(u) = W_2 GELU(W_1 u + b_1) + b_2 of width 4D;
* multi-head causal self-attention, softmax(q k^T / sqrt(d_h)) v per head (Vaswani et al. 2017, Eq. 1),
  where token t attends only to the last ``context`` tokens t - context + 1 .. t (a sliding window, as in
  Longformer's local attention, Beltagy et al. 2020), so memory and per-step cost are O(context);
* rotary position embeddings (RoPE; Su et al. 2021, Eq. 34): q and k of token t are rotated by the angles
  t * theta_i, theta_i = 10000^(-2i / d_h), so q_t . k_s depends on t - s only and the model is the same at
  every absolute step of an episode of any length;
* h_{t+1} = LN_f(x_t^L), the last block's output of token t after a final LayerNorm: the state's ``h``, which
  the controller reads, and the input of the head;
* the MDN-RNN's head layout: Linear(D, K + 2KZ + 2) -> ``MDNOutput`` (log_pi (K,), mu (K, Z), log_sigma (K, Z),
  reward (), done_logit ()), the prediction for step t + 1.

Two equal ways to run it (tested to ~1e-5): ``forward_sequence`` over a whole (T, .) sequence with a banded
causal mask (training), and ``__call__`` one step at a time with a KV cache (the dream and the agent). The cache
is a ring buffer of ``context`` slots per layer holding keys already rotated at their own step, so a cached key
never changes and the step's cost does not grow with t.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from worldmodels.models.mdnrnn import MDNOutput, batch_major_linear, mdn_head_output

ROPE_BASE = 10000.0
"""theta of RoPE's frequencies theta_i = ROPE_BASE^(-2i / d_h) (Su et al. 2021, Sec. 3.3; the sinusoids' 10000
of Vaswani et al. 2017, Sec. 3.5)."""


class TransformerState(NamedTuple):
    """The transformer's recurrent state: its KV cache over the last ``context`` steps.

    Attributes:
        h: float32 (H,) the last token's final (LayerNorm'd) output, which the controller reads; zeros before
            the first step.
        keys: float32 (L, C, heads, d_h) each layer's keys of the last C = ``context`` tokens, already rotated
            by RoPE at their own step; a ring buffer: the key of step s sits in slot s mod C.
        values: float32 (L, C, heads, d_h) the matching values.
        valid: bool (C,) which slots hold a token (all but the first min(t, C) are empty).
        t: int32 () the step index of the next token (the number of tokens consumed).
    """

    h: Float[Array, " H"]
    keys: Float[Array, "L C heads dh"]
    values: Float[Array, "L C heads dh"]
    valid: Bool[Array, " C"]
    t: Int[Array, ""]


def rope(x: Float[Array, "heads dh"], position: Float[Array, ""] | float) -> Float[Array, "heads dh"]:
    """Rotary position embedding of one token's queries or keys at step ``position`` (Su et al. 2021, Eq. 34).

    The first and second halves of the first 2 * (d_h // 2) features form the pairs (x_i, x_{i + d_h/2}), each
    rotated by the angle position * theta_i with theta_i = ROPE_BASE^(-2i / d_h) (the half-split pairing of
    GPT-NeoX; the paper pairs neighbours, the same up to a fixed permutation of features shared by q and k). An
    odd d_h's last feature is not rotated. Then rope(q, t) . rope(k, s) depends on t - s only.

    Args:
        x: float32 (heads, d_h).
        position: the token's absolute step (a scalar, traced or not).

    Returns:
        float32 (heads, d_h).
    """
    half = x.shape[-1] // 2
    if half == 0:
        return x
    theta = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angle = jnp.asarray(position, jnp.float32) * theta
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return jnp.concatenate([a * cos - b * sin, a * sin + b * cos, rest], axis=-1)


def attend(
    q: Float[Array, "heads dh"],
    keys: Float[Array, "N heads dh"],
    values: Float[Array, "N heads dh"],
    mask: Bool[Array, " N"],
) -> Float[Array, "heads dh"]:
    """Scaled dot-product attention of one query token over N key tokens (Vaswani et al. 2017, Eq. 1), per head.

    Args:
        q: float32 (heads, d_h) the (rotated) query.
        keys: float32 (N, heads, d_h) the (rotated) keys.
        values: float32 (N, heads, d_h).
        mask: bool (N,) which keys the query may attend to (at least one).

    Returns:
        float32 (heads, d_h): softmax_n(q . k_n / sqrt(d_h)) weighted sum of v_n, masked keys weighted 0.
    """
    scores = jnp.einsum("hd,nhd->hn", q, keys) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask[None, :], scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("hn,nhd->hd", weights, values)


def layer_norm(ln: eqx.nn.LayerNorm, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    """``ln`` over the last axis of ``x`` of any leading shape (Ba et al. 2016): (x - mean) / sqrt(var + eps) *
    weight + bias; the same values as ``ln(x)`` on one (D,) vector."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + ln.eps)
    if ln.weight is not None:
        y = y * ln.weight
    return y if ln.bias is None else y + ln.bias


class Block(eqx.Module):
    """One pre-LayerNorm decoder block (multi-head causal self-attention + MLP), split around its attention.

    ``project`` gives a token's rotated query and key and its value; attention over the window happens
    outside (it needs the other tokens); ``finish`` adds the attention's output projection and the MLP to the
    token's residual stream.

    Attributes:
        ln_attn, ln_mlp: LayerNorms before the attention and before the MLP, (D,).
        qkv: Linear(D, 3D) giving queries, keys and values of all heads.
        out: Linear(D, D), the attention's output projection W_o.
        fc1, fc2: the MLP, Linear(D, 4D) and Linear(4D, D), GELU between.
        heads: number of attention heads (static); d_h = D / heads.
    """

    ln_attn: eqx.nn.LayerNorm
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    ln_mlp: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    heads: int = eqx.field(static=True)

    def __init__(self, d_model: int, heads: int, *, key: PRNGKeyArray):
        k_qkv, k_out, k_fc1, k_fc2 = jr.split(key, 4)
        self.ln_attn, self.ln_mlp = eqx.nn.LayerNorm(d_model), eqx.nn.LayerNorm(d_model)
        self.qkv = eqx.nn.Linear(d_model, 3 * d_model, key=k_qkv)
        self.out = eqx.nn.Linear(d_model, d_model, key=k_out)
        self.fc1 = eqx.nn.Linear(d_model, 4 * d_model, key=k_fc1)
        self.fc2 = eqx.nn.Linear(4 * d_model, d_model, key=k_fc2)
        self.heads = heads

    def project(
        self, x: Float[Array, " D"], position: Float[Array, ""] | float
    ) -> tuple[Float[Array, "heads dh"], Float[Array, "heads dh"], Float[Array, "heads dh"]]:
        """Query, key (both rotated by RoPE at ``position``) and value of one token x (D,), each (heads, d_h)."""
        qkv = batch_major_linear(self.qkv, layer_norm(self.ln_attn, x)).reshape(3, self.heads, -1)
        return rope(qkv[0], position), rope(qkv[1], position), qkv[2]

    def finish(self, x: Float[Array, " D"], attended: Float[Array, "heads dh"]) -> Float[Array, " D"]:
        """The token's residual stream after the block: x + W_o attn, then + MLP(LN(x)); float32 (D,)."""
        x = x + batch_major_linear(self.out, attended.reshape(-1))
        hidden = jax.nn.gelu(batch_major_linear(self.fc1, layer_norm(self.ln_mlp, x)))
        return x + batch_major_linear(self.fc2, hidden)


class TransformerDynamics(eqx.Module):
    """Causal transformer over (z_t, a_t) tokens + the MDN-RNN's mixture, reward and done heads; one example.

    Implements ``Dynamics``: ``__call__`` is one step with the KV cache, ``forward_sequence`` the equal
    teacher-forced pass over a whole sequence (training).

    Attributes:
        embed: Linear(Z + A, D), the token of (z_t, a_t).
        blocks: the L decoder blocks.
        ln_final: the final LayerNorm (D,); its output of token t is h_{t+1}.
        head: Linear(D, K + 2KZ + 2), the MDN-RNN's head layout.
        z_size, action_size: Z, A.
        hidden_size: H = D = d_model, the size of ``state.h``.
        num_mixtures: K.
        layers: L.
        heads: attention heads; d_h = D / heads.
        context: C, the tokens each token attends to (itself and the C - 1 before it).
    """

    embed: eqx.nn.Linear
    blocks: tuple[Block, ...]
    ln_final: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    z_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    num_mixtures: int = eqx.field(static=True)
    layers: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    context: int = eqx.field(static=True)

    def __init__(
        self,
        z_size: int = 32,
        action_size: int = 3,
        hidden_size: int = 256,
        num_mixtures: int = 5,
        layers: int = 2,
        heads: int = 4,
        context: int = 64,
        *,
        key: PRNGKeyArray,
    ):
        """Raises ``ValueError`` when ``hidden_size`` is not divisible by ``heads`` or a size is below 1."""
        if min(layers, heads, context, hidden_size) < 1:
            raise ValueError(f"layers, heads, context and hidden_size must be >= 1, got {layers}, {heads}, "
                             f"{context}, {hidden_size}")  # fmt: skip
        if hidden_size % heads:
            raise ValueError(f"hidden_size (d_model) {hidden_size} is not divisible by heads {heads}")
        k_embed, k_head, *k_blocks = jr.split(key, 2 + layers)
        self.embed = eqx.nn.Linear(z_size + action_size, hidden_size, key=k_embed)
        self.blocks = tuple(Block(hidden_size, heads, key=k) for k in k_blocks)
        self.ln_final = eqx.nn.LayerNorm(hidden_size)
        k, z = num_mixtures, z_size
        self.head = eqx.nn.Linear(hidden_size, k + 2 * k * z + 2, key=k_head)
        self.z_size, self.action_size = z_size, action_size
        self.hidden_size, self.num_mixtures = hidden_size, num_mixtures
        self.layers, self.heads, self.context = layers, heads, context

    @property
    def head_size(self) -> int:
        """d_h = hidden_size / heads."""
        return self.hidden_size // self.heads

    def initial_state(self) -> TransformerState:
        """The empty cache: h zeros (H,), keys and values zeros (L, C, heads, d_h), no valid slot, t = 0."""
        cache = jnp.zeros((self.layers, self.context, self.heads, self.head_size), jnp.float32)
        return TransformerState(
            h=jnp.zeros((self.hidden_size,), jnp.float32),
            keys=cache,
            values=cache,
            valid=jnp.zeros((self.context,), bool),
            t=jnp.zeros((), jnp.int32),
        )

    def _output(self, x: Float[Array, " D"]) -> tuple[Float[Array, " D"], MDNOutput]:
        """The last block's output of one token -> (h = LN_f(x) (D,), the MDN-RNN head's ``MDNOutput``)."""
        h = layer_norm(self.ln_final, x)
        return h, mdn_head_output(batch_major_linear(self.head, h), self.num_mixtures, self.z_size)

    def __call__(
        self, z: Float[Array, " Z"], action: Float[Array, " A"], state: TransformerState
    ) -> tuple[TransformerState, MDNOutput]:
        """One step with the KV cache: consume token t = ``state.t`` of (z_t (Z,), a_t (A,)).

        Each layer writes the token's rotated key and value into slot t mod C of its ring buffer (overwriting
        step t - C, which leaves the window) and attends over the valid slots: steps max(0, t - C + 1) .. t.

        Returns:
            (the state with the new token cached, h its final output and t + 1; the ``MDNOutput`` for step t + 1).
        """
        slot = jax.nn.one_hot(state.t % self.context, self.context, dtype=bool)  # (C,): where token t goes
        valid = state.valid | slot
        x = batch_major_linear(self.embed, jnp.concatenate([z, action]))
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            q, k, v = block.project(x, state.t)
            layer_keys = jnp.where(slot[:, None, None], k[None], state.keys[layer])
            layer_values = jnp.where(slot[:, None, None], v[None], state.values[layer])
            x = block.finish(x, attend(q, layer_keys, layer_values, valid))
            keys.append(layer_keys)
            values.append(layer_values)
        h, out = self._output(x)
        return TransformerState(h, jnp.stack(keys), jnp.stack(values), valid, state.t + 1), out

    def forward_sequence(self, z: Float[Array, "T Z"], actions: Float[Array, "T A"]) -> MDNOutput:
        """Teacher-forced pass over a whole sequence from ``initial_state()``, with the banded causal mask.

        Token t attends to tokens max(0, t - C + 1) .. t. The attention is computed in blocks of S = min(C, T)
        queries, each over its own block and the one before (the window never reaches further back), so time
        and memory are O(T C), not O(T^2). Equal (to float rounding) to stepping ``__call__`` T times.

        Args:
            z: float32 (T, Z) latents z_0 .. z_{T-1}.
            actions: float32 (T, A) actions a_0 .. a_{T-1}.

        Returns:
            ``MDNOutput`` with a leading T axis: the predictions for steps 1 .. T.
        """
        T = z.shape[0]
        positions = jnp.arange(T)
        x = batch_major_linear(self.embed, jnp.concatenate([z, actions], axis=-1))  # (T, D)
        for block in self.blocks:
            q, k, v = jax.vmap(block.project)(x, positions)  # (T, heads, d_h) each
            x = jax.vmap(block.finish)(x, self._windowed_attention(q, k, v))
        return jax.vmap(self._output)(x)[1]

    def _windowed_attention(
        self, q: Float[Array, "T heads dh"], k: Float[Array, "T heads dh"], v: Float[Array, "T heads dh"]
    ) -> Float[Array, "T heads dh"]:
        """Sliding-window causal attention of T tokens (token t over t - C + 1 .. t), blockwise in O(T C)."""
        T, C = q.shape[0], self.context
        size = min(C, T)
        blocks = -(-T // size)
        pad = blocks * size - T

        def chunk(a):  # (T, ...) -> (blocks, size, ...), padded at the end (the padding is never attended to)
            a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
            return a.reshape(blocks, size, *a.shape[1:])

        qb, kb, vb = chunk(q), chunk(k), chunk(v)
        q_pos = jnp.arange(blocks * size).reshape(blocks, size)
        k_pos = q_pos
        if blocks > 1:  # each block's keys: the previous block's (zeros and positions < 0 before block 0) and its own
            prev = lambda a: jnp.concatenate([jnp.zeros_like(a[:1]), a[:-1]])  # noqa: E731
            kb = jnp.concatenate([prev(kb), kb], axis=1)
            vb = jnp.concatenate([prev(vb), vb], axis=1)
            k_pos = jnp.concatenate([q_pos - size, q_pos], axis=1)

        def one_query(q_i, i, keys, values, kp):
            mask = (kp <= i) & (kp > i - C) & (kp >= 0)
            return attend(q_i, keys, values, mask)

        per_block = jax.vmap(one_query, in_axes=(0, 0, None, None, None))
        out = jax.vmap(per_block)(qb, q_pos, kb, vb, k_pos)  # (blocks, size, heads, d_h)
        return out.reshape(blocks * size, *out.shape[2:])[:T]
