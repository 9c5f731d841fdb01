"""The ASGI entry point for servers: ``uvicorn src.web.asgi:app``.

The only module that builds anything at import time.
"""

from src.container import build_container
from src.web.app import create_app

app = create_app(build_container())
