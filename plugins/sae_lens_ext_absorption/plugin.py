"""Hook implementations of the absorption plugin."""
