"""attnopt: optimizing attention with lp mirror descent, attention SVMs and convex attention."""

__version__ = "0.1.0"
