"""Core Mesh: a peer-to-peer mesh networking stack."""
