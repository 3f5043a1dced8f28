"""The BiCoR-Seg Processing algorithms, one module each."""
