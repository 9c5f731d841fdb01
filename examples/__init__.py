"""Examples of what teams build on isochat, each run by the test suite."""
