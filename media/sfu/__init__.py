"""Selective forwarding on aiortc: encoded frames in, the same frames out."""
