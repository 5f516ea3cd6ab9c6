"""Hook implementations of the llc plugin."""
