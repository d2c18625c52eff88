"""Attention each key receives (softmax column means) without the attention matrix."""
