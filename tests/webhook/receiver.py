"""A webhook receiver for the tests: answers each POST (503 for the first FAIL_FIRST ones, then
200) and appends one JSON line per request to OUT: the Idempotency-Key, the status it answered
and the body. It listens on 127.0.0.1 on a free port and writes the port to PORT_FILE once
it listens.

    python3 receiver.py PORT_FILE OUT FAIL_FIRST
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, out_path, fail_first = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()
seen = 0


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global seen
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        with lock:
            seen += 1
            status = 503 if seen <= fail_first else 200
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"unparsed": raw.decode("utf-8", "replace")}
            line = {
                "key": self.headers.get("Idempotency-Key"),
                "content_type": self.headers.get("Content-Type"),
                "status": status,
                "body": body,
            }
            with open(out_path, "a") as out:
                out.write(json.dumps(line) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
