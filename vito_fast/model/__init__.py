"""vito_fast.model (filled in by later work)."""
