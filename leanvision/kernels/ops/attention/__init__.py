"""Prefill attention (GQA, padding mask, bottom-right causal): reference, Triton, custom op."""
