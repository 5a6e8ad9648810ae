"""Steward: serves scikit-learn models and knows, while serving them, whether they are right."""

__version__ = "0.1.0"
