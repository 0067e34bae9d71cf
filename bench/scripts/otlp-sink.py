# A sink for OTLP/HTTP: answers every POST with an empty ExportTraceServiceResponse, counts bytes.
import http.server, sys, threading
total = {"requests": 0, "bytes": 0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        total["requests"] += 1; total["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
def report():
    while True:
        threading.Event().wait(10)
        print(total, flush=True)
threading.Thread(target=report, daemon=True).start()
s.serve_forever()
