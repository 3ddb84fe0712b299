"""Stage 2: tuning vectors τ = θ_ft − θ_pre, lazily per tensor, from fine-tunes or vector folders."""
