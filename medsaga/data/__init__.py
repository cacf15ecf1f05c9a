"""Data: slicing volumes into 2-D training examples, intensity normalisation, datasets."""
