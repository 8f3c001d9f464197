"""The conformance cases, as test modules (``pytest --pyargs praison_db.testing.suite``), and all of them at once for
a test module of your own: ``from praison_db.testing.suite import *``. They need the fixtures of
:mod:`praison_db.testing.plugin`."""

from .test_closed import *  # noqa: F403
from .test_conversations import *  # noqa: F403
from .test_fuzz import *  # noqa: F403
from .test_iter_messages import *  # noqa: F403
from .test_message_ids import *  # noqa: F403
from .test_numbers import *  # noqa: F403
from .test_review import *  # noqa: F403
from .test_state import *  # noqa: F403
from .test_time import *  # noqa: F403
