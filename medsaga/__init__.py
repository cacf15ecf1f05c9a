"""medsaga: few-shot, memory-efficient fine-tuning of SAM for medical volumes."""

__version__ = "0.1.0"
