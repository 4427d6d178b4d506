"""The example's unit tests: app.py and settings.py from the directory above, and the
repository's Python SDK from its source when it is not installed."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
try:
    import switchboard_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parents[2] / "clients" / "python" / "src"))

# app.py builds its app at import, from the environment.
os.environ.setdefault("SWITCHBOARD_API_KEY", "example-test-key")
os.environ.setdefault("SWITCHBOARD_AUTH_HMAC_SECRET", "example-test-secret-0123456789abcdef")
