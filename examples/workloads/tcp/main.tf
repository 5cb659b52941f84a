# A raw TCP service (here an echo server) behind the router's stable TCP listener.
resource "computearbitrage_workload" "echo" {
  name    = "tcp-echo"
  command = ["python3", "-c", <<-PY
    import os, socket, threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    def echo(c):
        with c:
            while data := c.recv(65536): c.sendall(data)
    def tcp():
        s = socket.create_server(("0.0.0.0", int(os.environ["TCP_PORT"])))
        while True: threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
    threading.Thread(target=tcp, daemon=True).start()
    HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Health).serve_forever()
    PY
  ]
  tcp_port = 7000
  # Who may connect: this machine by default. List your clients' ranges to open it up.
  tcp_allowed_cidrs = ["127.0.0.0/8", "10.0.0.0/8"]

  requirements {
    min_vcpus = 1
  }

  health_check {
    path             = "/"
    interval_seconds = 5
  }
}

# nc $(terraform output -raw tcp_endpoint) reaches the echo server, wherever it runs.
output "tcp_endpoint" {
  value = computearbitrage_workload.echo.tcp_endpoint
}
