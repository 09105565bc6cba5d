"""Placeholder: implemented in the heads issue."""
