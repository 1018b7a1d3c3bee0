"""nasty_jax: Nasty Teacher (Ma et al., ICLR 2021) in JAX/Flax."""
