"""Dreaming of Others: a two-agent world model with a factorised latent, a theory-of-mind head and social
imagination, on JaxMARL's Overcooked (``env``, ``partners``, ``ppo``, ``world_model``, ``social``, ``train``)."""
