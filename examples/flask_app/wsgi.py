"""For a real server: ``gunicorn -w 4 examples.flask_app.wsgi:app`` and, beside it,
``aqueue worker examples.flask_app.wsgi:queue``.

Importing this connects nothing: each gunicorn worker (forked after import) starts its own
background loop and connections on its first ``.sync`` call.
"""

from __future__ import annotations

from .app import create_app
from .tasks import create_queue

queue = create_queue()
app = create_app(queue)
