"""Overlay routing through peers (sans-IO): routed packets, route tables, broadcast and multicast.

Fed by the endpoint (links up and down, their measurements, overlay packets from neighbours) and
feeding it overlay packets to seal into neighbours' sessions; see docs/architecture.md and
docs/routing.md.
"""
