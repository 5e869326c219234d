"""The paper's convolutional VAE (Ha & Schmidhuber 2018, Appendix A.1).

Encoder: four stride-2 4x4 convolutions (32, 64, 128, 256 filters, ReLU) on a 64x64x3 frame,
flattened to 2x2x256 = 1024, then dense layers to mu and log-variance of z (size Z).
Decoder: dense z -> 1024 (a 1x1x1024 map), then four stride-2 transposed convolutions with kernels
5, 5, 6, 6 (128, 64, 32, 3 filters) back to 64x64x3, sigmoid output.

``arch="residual"`` is a deeper variant: after each of the first three (transposed) convolutions of the
encoder and of the decoder, a residual block x + conv3x3(relu(conv3x3(relu(x)))) at the same resolution
and width (He et al. 2016, "Identity mappings in deep residual networks", the pre-activation block; the
residual encoders and decoders of NVAE, Vahdat & Kautz 2020, and DreamerV3 are of this family). It adds
six 3x3 convolutions (0.78 M parameters at Z = 32) to the paper's 4.35 M.

``encode`` and ``decode`` take one example or any leading batch axes: the convolutions are batched
natively (NHWC) rather than through ``jax.vmap`` because the transposed convolution carries a custom
VJP whose weight gradient is one matmul over the whole batch. XLA:CPU computes that gradient with
its generic dilated convolution about 10x slower; under ``vmap`` a custom VJP would materialise a
weight gradient per example.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

_DN = ("NHWC", "HWIO", "NHWC")


def to_float(frame: Array) -> Float[Array, "..."]:
    """Observations as V reads them: uint8 HWC frames in [0, 255] -> float32 in [0, 1] (any leading axes); an
    observation that is already a float (a vector environment's, ``models.mlp_autoencoder``) -> float32 as is."""
    if frame.dtype == jnp.uint8:
        return frame.astype(jnp.float32) / 255.0
    return frame.astype(jnp.float32)


def _conv_transpose_impl(x: Array, w: Array) -> Array:
    return lax.conv_transpose(x, w, (2, 2), "VALID", dimension_numbers=_DN)


@jax.custom_vjp
def conv_transpose_s2(x: Float[Array, "N H W C"], w: Float[Array, "k k C O"]) -> Float[Array, "N Ho Wo O"]:
    """Stride-2 VALID transposed convolution, NHWC / HWIO, output side 2 (H - 1) + k.

    Same values as ``lax.conv_transpose``; the backward pass gathers the k*k strided windows of the
    output gradient once and computes both the input and the weight gradient as matmuls.
    """
    return _conv_transpose_impl(x, w)


def _conv_transpose_fwd(x, w):
    return _conv_transpose_impl(x, w), (x, w)


def _conv_transpose_bwd(res, g):
    x, w = res
    n, h, wd, c = x.shape
    k, o = w.shape[0], w.shape[3]
    # windows[n, i, j, (a, b, o)] = g[n, 2i + a, 2j + b, o]: every output pixel input (i, j) touched
    windows = jnp.concatenate(
        [g[:, a : a + 2 * h - 1 : 2, b : b + 2 * wd - 1 : 2] for a in range(k) for b in range(k)], axis=-1
    ).reshape(n * h * wd, k * k * o)
    w_flip = w[::-1, ::-1]
    dx = (windows @ w_flip.transpose(0, 1, 3, 2).reshape(k * k * o, c)).reshape(n, h, wd, c)
    dw = (x.reshape(n * h * wd, c).T @ windows).reshape(c, k, k, o).transpose(1, 2, 0, 3)
    return dx, dw[::-1, ::-1]


conv_transpose_s2.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _uniform_init(key: PRNGKeyArray, kernel: int, cin: int, cout: int, fan_in: int) -> tuple[Array, Array]:
    """HWIO weight and bias drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default."""
    kw, kb = jr.split(key)
    lim = 1.0 / math.sqrt(fan_in)
    weight = jr.uniform(kw, (kernel, kernel, cin, cout), minval=-lim, maxval=lim)
    return weight, jr.uniform(kb, (cout,), minval=-lim, maxval=lim)


class Conv2dS2(eqx.Module):
    """Stride-2 VALID convolution on NHWC maps (HWIO kernel), default uniform init as in PyTorch."""

    weight: Float[Array, "k k C O"]
    bias: Float[Array, " O"]

    def __init__(self, cin: int, cout: int, kernel: int, *, key: PRNGKeyArray):
        self.weight, self.bias = _uniform_init(key, kernel, cin, cout, fan_in=cin * kernel * kernel)

    def __call__(self, x: Float[Array, "N H W C"]) -> Float[Array, "N Ho Wo O"]:
        return lax.conv_general_dilated(x, self.weight, (2, 2), "VALID", dimension_numbers=_DN) + self.bias


class ResBlock(eqx.Module):
    """Pre-activation residual block on NHWC maps: x + conv2(relu(conv1(relu(x)))), two 3x3 SAME convolutions
    of ``channels`` filters (He et al. 2016, Eq. 1 with the full pre-activation unit of their Fig. 4e)."""

    w1: Float[Array, "3 3 C C"]
    b1: Float[Array, " C"]
    w2: Float[Array, "3 3 C C"]
    b2: Float[Array, " C"]

    def __init__(self, channels: int, *, key: PRNGKeyArray):
        k1, k2 = jr.split(key)
        self.w1, self.b1 = _uniform_init(k1, 3, channels, channels, fan_in=channels * 9)
        self.w2, self.b2 = _uniform_init(k2, 3, channels, channels, fan_in=channels * 9)
        # Start each block near the identity so the deeper model begins as the paper's.
        self.w2, self.b2 = 0.1 * self.w2, 0.1 * self.b2

    def __call__(self, x: Float[Array, "N H W C"]) -> Float[Array, "N H W C"]:
        def conv(v, w, b):
            return lax.conv_general_dilated(v, w, (1, 1), "SAME", dimension_numbers=_DN) + b

        return x + conv(jax.nn.relu(conv(jax.nn.relu(x), self.w1, self.b1)), self.w2, self.b2)


VAE_ARCHS = ("conv", "residual")
"""Vision architectures of ``ConvVAE``: the paper's (``conv``) and the deeper residual one (``residual``)."""


class ConvTranspose2dS2(eqx.Module):
    """Stride-2 VALID transposed convolution on NHWC maps, output side 2 (H - 1) + k."""

    weight: Float[Array, "k k C O"]
    bias: Float[Array, " O"]

    def __init__(self, cin: int, cout: int, kernel: int, *, key: PRNGKeyArray):
        # A transposed convolution's fan-in is its output channels times the kernel area (PyTorch's rule).
        self.weight, self.bias = _uniform_init(key, kernel, cin, cout, fan_in=cout * kernel * kernel)

    def __call__(self, x: Float[Array, "N H W C"]) -> Float[Array, "N Ho Wo O"]:
        return conv_transpose_s2(x, self.weight) + self.bias


class ConvVAE(eqx.Module):
    """Convolutional VAE on 64x64x3 frames (float32 HWC in [0, 1]).

    Attributes:
        z_size: latent size Z.
        arch: ``conv`` (the paper's) or ``residual`` (a residual block after each of the first three
            convolutions of the encoder and of the decoder, see the module docstring).

    Raises:
        ValueError: for an ``arch`` outside ``VAE_ARCHS``.
    """

    enc: tuple[Conv2dS2, ...]
    fc_mu: eqx.nn.Linear
    fc_logvar: eqx.nn.Linear
    fc_dec: eqx.nn.Linear
    dec: tuple[ConvTranspose2dS2, ...]
    res_enc: tuple[ResBlock, ...]
    res_dec: tuple[ResBlock, ...]
    z_size: int = eqx.field(static=True)
    arch: str = eqx.field(static=True)

    def __init__(self, z_size: int = 32, arch: str = "conv", *, key: PRNGKeyArray):
        if arch not in VAE_ARCHS:
            raise ValueError(f"VAE arch must be one of {', '.join(VAE_ARCHS)}, got {arch!r}")
        keys = jr.split(key, 12)
        chans = (3, 32, 64, 128, 256)
        self.enc = tuple(Conv2dS2(chans[i], chans[i + 1], 4, key=keys[i]) for i in range(4))
        self.fc_mu = eqx.nn.Linear(1024, z_size, key=keys[4])
        self.fc_logvar = eqx.nn.Linear(1024, z_size, key=keys[5])
        self.fc_dec = eqx.nn.Linear(z_size, 1024, key=keys[6])
        dchans = (1024, 128, 64, 32, 3)
        kernels = (5, 5, 6, 6)
        self.dec = tuple(ConvTranspose2dS2(dchans[i], dchans[i + 1], kernels[i], key=keys[7 + i]) for i in range(4))
        rkeys = jr.split(keys[11], 6)
        residual = arch == "residual"
        self.res_enc = tuple(ResBlock(chans[i + 1], key=rkeys[i]) for i in range(3)) if residual else ()
        self.res_dec = tuple(ResBlock(dchans[i + 1], key=rkeys[3 + i]) for i in range(3)) if residual else ()
        self.z_size, self.arch = z_size, arch

    def encode(self, x: Float[Array, "*B 64 64 3"]) -> tuple[Float[Array, "*B Z"], Float[Array, "*B Z"]]:
        """Frames (float32 HWC in [0, 1], any leading axes) -> (mu, logvar), each float32 (*B, Z)."""
        lead = x.shape[:-3]
        h = x.reshape((-1,) + x.shape[-3:])
        for i, conv in enumerate(self.enc):
            h = jax.nn.relu(conv(h))
            if i < len(self.res_enc):
                h = self.res_enc[i](h)
        h = h.reshape(h.shape[0], -1)
        mu = jax.vmap(self.fc_mu)(h).reshape(lead + (self.z_size,))
        logvar = jax.vmap(self.fc_logvar)(h).reshape(lead + (self.z_size,))
        return mu, logvar

    def decode(self, z: Float[Array, "*B Z"]) -> Float[Array, "*B 64 64 3"]:
        """Latents (*B, Z) -> frames float32 (*B, 64, 64, 3) in [0, 1]."""
        lead = z.shape[:-1]
        h = jax.vmap(self.fc_dec)(z.reshape(-1, self.z_size)).reshape(-1, 1, 1, 1024)
        for i, deconv in enumerate(self.dec):
            h = deconv(h)
            h = jax.nn.relu(h) if i < len(self.dec) - 1 else jax.nn.sigmoid(h)
            if i < len(self.res_dec):
                h = self.res_dec[i](h)
        return h.reshape(lead + (64, 64, 3))

    def __call__(
        self, x: Float[Array, "*B 64 64 3"], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "*B 64 64 3"], Float[Array, "*B Z"], Float[Array, "*B Z"]]:
        """Encode, sample z = mu + sigma * eps (reparameterisation, Kingma & Welling 2014), decode.

        Returns:
            (reconstruction float32 (*B, 64, 64, 3), mu (*B, Z), logvar (*B, Z)).
        """
        mu, logvar = self.encode(x)
        z = mu + jnp.exp(0.5 * logvar) * jr.normal(key, mu.shape)
        return self.decode(z), mu, logvar
