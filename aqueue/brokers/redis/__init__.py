"""The Redis broker (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
``redis+cluster://``): see
docs/brokers/redis.md.

``broker`` (RedisBroker: publish, claim, renew, inspection), ``cluster``
(RedisClusterBroker: what differs on a Redis Cluster), ``delivery`` (a claimed message and
its batched settlement), ``wait`` (the blocking claim), ``throttle`` (limits shared by
every worker), ``topics`` (control, replies and events, one stream each) and ``scripts``
(the Lua in ``lua/``, and its keys, arguments and replies by name).
"""

from .broker import RedisBroker
from .cluster import RedisClusterBroker
from .delivery import RedisDelivery

__all__ = ["RedisBroker", "RedisClusterBroker", "RedisDelivery"]
