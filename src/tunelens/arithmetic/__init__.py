"""Stage 3b: weight arithmetic. θ = θ_target + Σ λ_i τ_i streamed into a checkpoint, in place on a
resident model (``inmemory.edited``), interference-aware merges (TIES / DARE via PEFT) and LoRA
extraction of a tuning vector."""
