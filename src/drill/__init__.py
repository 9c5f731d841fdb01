"""``isochat drill``: isolation proven on a live deployment, the way an operator checks it.

``cli`` is the command line and its exit codes, ``plan`` says who the drill's users are and
how each run must end, ``client`` is one user's connections, ``steps`` the drill's steps in
order, ``phases`` the load of its two phases, ``progress`` what the terminal shows meanwhile,
``hosts`` what is read off each host's ``/metrics``, ``checks`` what the frames a socket
received must show, ``report`` the figures and checks. The faults themselves are the server's,
for drill users only: ``src/drill/faults.py``.
"""
