"""Tombstones of retired modules; each raises ImportError naming its replacement."""
