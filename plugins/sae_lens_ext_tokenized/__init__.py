"""sae-lens-ext plugin: tokenized."""
