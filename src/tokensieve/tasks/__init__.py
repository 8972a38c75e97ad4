"""Offline task generators: contexts with known answers, measured in the model's own tokens."""
