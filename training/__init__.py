"""Offline training for the convolutional AE and VAE of "Generative Deep Learning" (ch. 3)."""
