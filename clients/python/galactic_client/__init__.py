"""galactic client."""
