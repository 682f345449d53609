"""Exports: the refined corpus in the formats other trainers read, with its provenance."""
