"""AMQP (RabbitMQ) on aio-pika: what the RabbitMQ broker and the ``rpc://`` backend share.

* :mod:`.settings`: the URL and connection options (:class:`RabbitSettings`,
  :func:`parse_settings`), password scrubbing, the content type;
* :mod:`.link`: one lazily (re)opened connection (:class:`Link`) and :data:`AMQP_ERRORS`;
* :mod:`.loop_end`: closing a client whose owner never closed it (:class:`LoopEndClose`);
* :mod:`.aiormq_hooks`: the only module that touches aiormq's internals (inline delivery,
  returns, raw publishes), with its version guard.

It knows neither role: nothing here imports a broker or a result backend.
"""
