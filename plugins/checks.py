"""Placeholder: implemented in the gate issue."""
