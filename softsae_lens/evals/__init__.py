"""Held-out metrics: SAEs on arrays on disk, SAEs spliced into a language model, per-token statistics."""
