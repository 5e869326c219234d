"""World Models in JAX: V (conv VAE), M (MDN-RNN), C (linear controller evolved in the dream)."""
