"""Hook implementations of the tokenized plugin."""
