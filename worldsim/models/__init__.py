"""The world model's networks: VAE, transformer, the model, backbones and encoders."""
