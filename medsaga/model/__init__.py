"""SAM construction, checkpoint formats and the prompt-free multi-class head."""
