"""One module per benchmark figure; `run.py` runs them and prints the table."""
