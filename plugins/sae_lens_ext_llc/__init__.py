"""sae-lens-ext plugin: llc."""
