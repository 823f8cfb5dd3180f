"""Everyday tools around training."""
