"""vito_fast.eval (filled in by later work)."""
