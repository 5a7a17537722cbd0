"""The world model's networks: the RGB-D VAE, the transformer, the world model that joins
them, and the image backbones and feature encoders that memories and metrics stand on.
"""
