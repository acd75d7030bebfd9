"""hayai: fast local image generation with diffusion models."""

__version__ = "0.1.0"
