"""Tuning methods, one module each behind one interface (:mod:`medsaga.methods.base`)."""

from medsaga.methods.base import TuningMethod, count_parameters
from medsaga.methods.persist import load_trained, save_trained
from medsaga.methods.registry import create_method, method_names

__all__ = ["TuningMethod", "count_parameters", "create_method", "load_trained", "method_names", "save_trained"]
