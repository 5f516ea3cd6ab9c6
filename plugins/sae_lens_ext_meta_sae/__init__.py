"""sae-lens-ext plugin: meta_sae."""
