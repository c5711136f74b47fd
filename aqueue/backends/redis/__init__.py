"""The Redis result backend: see docs/brokers/redis.md ("The result backend").

``backend`` (RedisBackend: fenced stores, reads, chords) and ``pubsub`` (one pub/sub
connection per backend, multiplexed over every watcher); its Lua is in ``lua/``.
"""

from .backend import RedisBackend

__all__ = ["RedisBackend"]
