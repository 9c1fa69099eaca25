"""The secure channel between two peers: Noise handshakes, transport sessions and their wire format.

- :mod:`.noise`: the Noise framework (IK/XX over X25519, ChaCha20-Poly1305, BLAKE2s), checked against
  the cacophony vectors.
- :mod:`.session`: a handshake and the transport session it yields (keys, counters, rekeying).
- :mod:`.replay`: the sliding replay window of a session's receive counters.
- :mod:`.wire`: the mesh packet types and their headers.

All of it is sans-IO: bytes and the current time in, bytes out.
"""
