"""EfficientViT's ReLU linear attention: torch reference, Triton kernel, custom op."""
