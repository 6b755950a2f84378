"""Gateway: WebSocket connections, its own inbox, ordered delivery, catch-up (ports 8084+)."""
