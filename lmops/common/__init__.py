"""Helpers shared by the layer methods (bitnet, reslora, mole): target matching, atomic files."""
