"""`python -m rolloutq.controller` is `rolloutq`."""

from rolloutq.controller.cli import app

app()
