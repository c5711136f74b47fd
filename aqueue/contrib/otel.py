"""OpenTelemetry tracing: messaging spans around sending and running tasks. Needs
``aqueue[otel]`` (the API; the application brings the SDK and an exporter).

``app.add_middleware(TracingMiddleware())`` and every message published through the app
gets a PRODUCER span ``send <queue>`` whose W3C trace context is injected into the
message's headers (``traceparent``, ``tracestate``); every task a worker runs gets a
CONSUMER span ``process <queue>`` whose parent is that context. A task sent while another
runs (a chain's next step, a group's members, callbacks, a subtask) is sent inside the
running task's span, so a whole workflow, and the web request that started it, is one
trace. Spans follow the OpenTelemetry messaging semantic conventions
(docs/observability.md lists the attributes).

Nothing imports this module but a program that asks for tracing: ``import aqueue`` never
imports ``opentelemetry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..__about__ import __version__
from ..core.errors import ConfigurationError, Replace, Retry
from ..core.middleware import ExecuteNext, Middleware, PublishNext

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, StatusCode
    from opentelemetry.util.types import AttributeValue
except ImportError:  # pragma: no cover - the extra is missing
    raise ConfigurationError(
        'tracing needs the OpenTelemetry API: pip install "aqueue[otel]"'
    ) from None

if TYPE_CHECKING:
    from ..core.context import Request
    from ..core.message import MessageOut

__all__ = ["TracingMiddleware"]

#: ``messaging.system``
SYSTEM = "aqueue"


class TracingMiddleware(Middleware):
    """Messaging spans for sending (PRODUCER) and running (CONSUMER) tasks.

    Args:
        tracer_provider: the provider to take the tracer from (default: the global one,
            as set by ``trace.set_tracer_provider``).
        system: the ``messaging.system`` attribute.
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, system: str = SYSTEM
    ) -> None:
        self.tracer = trace.get_tracer("aqueue", __version__, tracer_provider=tracer_provider)
        self.system = system

    async def publish(self, message: MessageOut, call_next: PublishNext) -> None:
        """A ``send`` span around publishing, its context carried in the message's headers."""
        attributes: dict[str, AttributeValue] = {
            "messaging.system": self.system,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": message.queue,
            "messaging.message.id": message.id,
            "messaging.message.conversation_id": message.root_id or message.id,
            "aqueue.task.name": message.task,
        }
        with self.tracer.start_as_current_span(
            f"send {message.queue}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            headers = dict(message.headers)
            propagate.inject(headers)  # the current context: the send span's
            await call_next(msgspec.structs.replace(message, headers=headers))

    async def execute(self, request: Request, call_next: ExecuteNext) -> Any:
        """A ``process`` span around the task, a child of the context its message carried.

        The span's context stays current in the task's asyncio task after the body
        returns, on purpose: the worker publishes what follows the task (a chain's next
        step, callbacks, a chord's body) after this middleware has returned, and those
        sends must be children of this span. Each delivery runs in an asyncio task of its
        own, which ends with it, so the context goes no further.
        """
        parent = propagate.extract(request.headers)
        attributes: dict[str, AttributeValue] = {
            "messaging.system": self.system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": request.queue,
            "messaging.message.id": request.id,
            "messaging.message.conversation_id": request.root_id or request.id,
            "aqueue.task.name": request.task,
            "aqueue.task.attempt": request.attempt,
        }
        span = self.tracer.start_span(
            f"process {request.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        otel_context.attach(trace.set_span_in_context(span, parent))  # see the docstring
        try:
            return await call_next()
        except (Retry, Replace):  # the task asked for it: not an error
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__qualname__)
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            span.end()
