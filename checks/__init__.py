"""Check functions for what a plain threshold cannot express, one module per family."""
