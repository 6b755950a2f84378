"""Registry service: gateway and send discovery, heartbeats, least-load choice, user routes (port 8083)."""
