"""Device meshes and sharding rules."""
