"""Redis: what the Redis broker and result backend share; knows neither role.

``settings`` (the URL and options, checked once; the clients they make), ``sentinel``
(Redis Sentinel URLs: the master's name and its sentinels), ``guard`` (one
deadline per call, redis-py's errors as aqueue's, passwords scrubbed), ``clients`` (the
one ``connect``), ``scripts`` (Lua from ``.lua`` files, run by SHA with one ``NOSCRIPT``
rule), ``coalesce`` (group commit), ``keys`` (hash tags, and the task records both roles
read) and ``redispy``: the only module that touches redis-py's internals.
"""
