"""`python -m controller` is `rolloutq`."""

from controller.cli import app

app()
