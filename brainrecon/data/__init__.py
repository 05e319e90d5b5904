"""Data: the embedded toy world, the NSD reader, cortical flatmaps and training datasets."""
