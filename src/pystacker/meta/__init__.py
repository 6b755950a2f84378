"""Meta service: users, rooms, members, roles, join requests (port 8082)."""
