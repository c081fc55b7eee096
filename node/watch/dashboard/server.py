"""A small threaded HTTP server for the status page; no framework, no CDN."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

from node.errors import SwarmtrainError

PAGE = files("node.watch.dashboard").joinpath("page.html").read_bytes


class StatusServer:
    """Serves until `close()`. `status()` and `metrics()` are called per request, in its thread."""

    def __init__(self, host: str, port: int, status: Callable[[], dict], metrics: Callable[[], bytes]):
        routes = {
            "/": ("text/html; charset=utf-8", PAGE),
            "/api/status": ("application/json", lambda: json.dumps(status()).encode()),
            "/metrics": ("text/plain; version=0.0.4; charset=utf-8", metrics),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404, "try /, /api/status or /metrics")
                    return
                body = route[1]()
                self.send_response(200)
                self.send_header("Content-Type", route[0])
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # one line per scrape would drown the progress output
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise SwarmtrainError(
                f"cannot serve the status page on {host}:{port}: {e.strerror}",
                "pick another --status-port, 0 for a free one, or -1 to turn the page off",
            ) from None
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class NoStatusServer:
    """The page turned off (--status-port -1): the same interface, doing nothing."""

    url = ""

    def close(self) -> None:
        pass
