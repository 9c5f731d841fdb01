"""``isochat drill``: isolation proven on a live deployment, the way an operator checks it.

``plan`` says who the drill's users are and how each run must end, ``client`` is one user's
connections, ``runner`` the drill's steps, ``hosts`` what is read off each host's ``/metrics``,
``report`` the figures and checks. The faults themselves are the server's, for drill users only:
``src/drill/faults.py``.
"""
