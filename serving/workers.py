"""Several uvicorn workers that share the load evenly: one listening socket each.

uvicorn's :class:`~uvicorn.supervisors.Multiprocess` binds one socket and
hands it to every worker. Each worker's event loop then accepts every
connection waiting when it wakes, so a client that opens its keep-alive
connections in a burst (a shop's frontend, a proxy's pool, the bench) often
finds nearly all of them on one worker: measured with 32 connections and two
workers, 29 to 32 of them landed on one, which then ran at its limit while the
other idled, and the p99 at a third of the capacity was hundreds of
milliseconds. With ``SO_REUSEPORT`` (Linux), each worker listens on its own
socket bound to the same address and the kernel spreads new connections over
them by a hash of the connection's addresses (nginx's ``reuseport``).

A worker that dies is replaced on the same socket, which the supervisor keeps
open, so connections hashed to it wait in its queue for the replacement rather
than being refused. Where ``SO_REUSEPORT`` does not spread connections (not
Linux), the workers share one socket as before.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("uvicorn.error")


def spreads_connections() -> bool:
    """Whether this system balances connections over ``SO_REUSEPORT`` sockets."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP sockets bound to ``(host, port)`` in one ``SO_REUSEPORT`` group.

    Port 0 binds the first to a free port and the others to that one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            # proto IPPROTO_TCP: accepted connections then get TCP_NODELAY from
            # uvicorn (with proto 0 a keep-alive answer waits ~40 ms for the
            # client's delayed ACK, Kludex/uvicorn#3149)
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SpreadWorkers(Multiprocess):
    """:class:`~uvicorn.supervisors.Multiprocess` with one socket per worker.

    Worker ``i`` always listens on ``sockets[i]``, including a replacement
    after a crash or a restart (``SIGHUP``). The number of workers is fixed:
    ``SIGTTIN``/``SIGTTOU`` are logged and ignored, since a socket without a
    worker would hold its share of the connections unanswered.
    """

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        if len(sockets) != config.workers:
            raise ValueError(f"{config.workers} workers need as many sockets, not {len(sockets)}")
        super().__init__(config, sockets)

    def _start(self, idx: int) -> Process:
        process = Process(self.config, [self.sockets[idx]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(i) for i in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # it failed before serving (the app or the socket is broken) and
                # would fail the same way again, as uvicorn's supervisor decides
                log.error("Child process [%s] failed to start, stopping.", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.info("Child process [%s] died; starting a new one on its socket", process.pid)
            self.processes[idx] = self._start(idx)

    def restart_all(self) -> None:
        """Replace each worker in turn: the new one serves before the old one stops.

        Both listen on the same socket for that moment, so no connection waits.
        """
        for idx, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(idx)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    log.error(
                        "New child process [%s] was not ready in time; keeping worker [%s] "
                        "and aborting the restart.",
                        new.pid,
                        old.pid,
                    )
                return
            old.terminate()
            old.join()
            self.processes[idx] = new

    def handle_ttin(self) -> None:
        log.info("Received SIGTTIN: the number of workers is fixed with one socket each")

    def handle_ttou(self) -> None:
        log.info("Received SIGTTOU: the number of workers is fixed with one socket each")
