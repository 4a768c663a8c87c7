"""Adapters that serve a daxfs to the rest of the machine."""
