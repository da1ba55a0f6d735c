"""A TCP proxy on 127.0.0.1 that a test can cut and restore, to make a server 'unreachable'."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.up = True
        # Partitioned: connections open and bytes go in, but nothing comes out either way.
        self.silent = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            if self.silent:
                with self._lock:
                    self._held.append(client)
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.silent:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        """Refuses new connections and breaks every open one."""
        self.up = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def partition(self) -> None:
        """Keeps every connection open and accepts new ones, but nothing gets through: a network
        partition, where nothing fails and nothing answers."""
        self.silent = True

    def heal(self) -> None:
        """Ends a partition. The connections it held broke, as TCP breaks them once the peer has
        not acknowledged for tcp_user_timeout (the proxy's own kernel acknowledged their bytes, so
        here the proxy breaks them itself); new connections work."""
        was_silent = self.silent
        if was_silent:
            self.cut()
            with self._lock:
                held, self._held = self._held, []
            for s in held:
                with contextlib.suppress(OSError):
                    s.close()
        self.silent = False
        self.up = True

    def restore(self) -> None:
        if self.silent:
            self.heal()
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
