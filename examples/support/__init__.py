"""A support team's plug-in: a ``support`` route whose agent calls two tools of the team's
own (a weather service over HTTP, and an order lookup), declared in a container of the team's
own (``container.py``), with nothing in ``src/`` edited.

    ISOCHAT_PLUGINS=examples.support.container:SupportPlugin isochat serve
"""
