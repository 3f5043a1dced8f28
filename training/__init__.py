"""Training package: datasets, transforms, losses, trainer and evaluation for the segmentation models."""
