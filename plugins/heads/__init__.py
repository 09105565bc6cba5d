"""Built-in heads: one file each, registered through ``register_heads`` like any external head."""
