"""Loopback ports for the daemons a benchmark starts.

Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768-60999 by default): a
port the kernel hands out for bind(0) can be handed out again to one of the peers' own
outgoing connections between our check and the daemon's bind, and a 64-peer swarm opens
hundreds of those. Ports below the range never go to outgoing connections. A counter from a
pid-derived base keeps one script's picks apart and apart from another process's.
"""
import itertools
import os
import socket


def _fixed_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    return (10000, lo) if lo >= 12000 else (hi + 1, 65535)


_LO, _HI = _fixed_range()
_NEXT = itertools.count((os.getpid() * 97) % (_HI - _LO))


def _bindable(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port():
    """A loopback port free for TCP and UDP now, outside the ephemeral range."""
    for _ in range(_HI - _LO):
        port = _LO + next(_NEXT) % (_HI - _LO)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free loopback port in {_LO}..{_HI}")
