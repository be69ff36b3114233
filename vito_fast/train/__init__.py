"""vito_fast.train (filled in by later work)."""
