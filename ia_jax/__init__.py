"""ia-jax: introspection adapters in pure JAX."""
