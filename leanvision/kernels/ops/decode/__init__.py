"""Split-KV decode attention with FlashDecoding++'s unified max: torch reference, Triton, op."""
