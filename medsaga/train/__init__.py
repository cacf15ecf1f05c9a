"""Few-shot fine-tuning: case selection, training slices, augmentation, the loop, its report."""
