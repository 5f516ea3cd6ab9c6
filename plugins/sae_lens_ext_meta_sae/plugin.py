"""Hook implementations of the meta_sae plugin."""
