"""sae-lens-ext plugin: absorption."""
