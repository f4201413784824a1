"""A free TCP port on the loopback interface, for tests that start process groups or servers."""
import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; a race with another process is possible but rare)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
