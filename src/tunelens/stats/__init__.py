"""Stage 3a: weight-space statistics (pure functions over float64 sums, one streaming pass)."""
