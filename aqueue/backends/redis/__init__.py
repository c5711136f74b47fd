"""The Redis result backend: see docs/brokers/redis.md ("The result backend").

``backend`` (RedisBackend: fenced stores, reads, chords; RedisClusterBackend: the same on a
Redis Cluster, one call per task's slot) and ``pubsub`` (one pub/sub connection per
backend, multiplexed over every watcher); its Lua is in ``lua/``.
"""

from .backend import RedisBackend, RedisClusterBackend

__all__ = ["RedisBackend", "RedisClusterBackend"]
