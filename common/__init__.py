"""Shared machinery of cvgl-keras: data, polar transform, augmentation, losses, retrieval, backbones,
training and export plumbing used by every model family."""
