"""Stage 1: read and write checkpoints (headers, tensor names, streaming, sharded output)."""
