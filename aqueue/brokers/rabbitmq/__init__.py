"""``amqp://`` and ``amqps://``: the RabbitMQ broker on aio-pika.

The connection is the lease: a claimed message stays unacknowledged on this process's
consuming channel until it is settled, and RabbitMQ hands it to another consumer the moment
that channel or connection dies. Fencing follows from that: a delivery remembers the channel
generation it came from and settles nothing once that channel is gone.

The pieces, one concept each:

* :mod:`.broker`: :class:`RabbitMQBroker`, the :class:`~aqueue.core.protocols.Broker`;
* :mod:`.options`: the broker's options (:class:`~.options.BrokerOptions`);
* :mod:`.topology`: queue names, arguments, headers and delay levels;
* :mod:`.dedupe`: de-duplication of published ids;
* :mod:`.channels`: the channels on the connection, declarations, confirmed publishes;
* :mod:`.consumer`: consumers, claims and settlement;
* :mod:`.acks`: acks batched into ``multiple`` frames;
* :mod:`.delivery`: what a claim hands out (:class:`RabbitMQDelivery`);
* :mod:`.topics`: control, replies and events (fanout exchanges, exclusive queues, a stream).

What it shares with the ``rpc://`` result backend (settings, the connection, aiormq's
internals) lives in :mod:`aqueue.transports.amqp`. docs/brokers/rabbitmq.md says it all in
plain words.
"""

from .broker import RabbitMQBroker
from .delivery import RabbitMQDelivery

__all__ = ["RabbitMQBroker", "RabbitMQDelivery"]
