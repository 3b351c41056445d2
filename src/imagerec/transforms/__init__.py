"""Augmentation presets and eval transforms per task, on torchvision.transforms.v2."""
