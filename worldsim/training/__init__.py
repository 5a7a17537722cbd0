"""Training the world model: the losses of each stage and the resumable trainer."""
