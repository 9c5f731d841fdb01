"""A run's life, in one place.

- ``domain``: what a run is (``RunContext``, ``Run``, ``Event``, ``Usage``, the statuses), and
  what a client sees of threads, messages, runs and events;
- ``ledger``: the run's state machine, every transition one guarded statement (``pauses``:
  those of a run that waits for a person; ``queue``: of the runs that wait their turn;
  ``starting``: a message and its run; ``readback``: what is stored of a write in doubt);
- ``emitter``: a run's events, appended and published as they happen;
- ``ender``: the one ender, which every way of ending a run calls;
- ``registry``: the runs this process executes; ``leases``: who may end whose run;
- ``cancel``: cancelling a run wherever it runs, waiting for its end;
- ``follower``: the one way a client gets a run's events, each once, in order;
- ``approvals``: a run paused for a person: what it stores, and how it pauses.
"""
