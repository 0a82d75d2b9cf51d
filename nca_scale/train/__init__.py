"""The training engine: one Trainer loop and callbacks over three backends (torch, megatron, deepspeed)."""
