"""Model definitions: the Llama config (counts, FLOPs) and the native PyTorch implementation."""
