// "Node hello": the plain http module (no npm packages), used by the
// benchmark (integration/bench) and as the smallest [app] fixture.
// Listens on fd 3 (socket activation, LISTEN_FDS), else on $SOCKET (a Unix
// socket path it binds itself: the benchmark's nginx side), else $HOST:$PORT.
'use strict';
const http = require('http');

const body = Buffer.from('Hello, World!'); // 13 B, as the benchmark's other hellos
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
  res.end(body);
});
if (process.env.LISTEN_FDS) {
  server.listen({ fd: 3 });
} else if (process.env.SOCKET) {
  server.listen(process.env.SOCKET);
} else {
  server.listen(parseInt(process.env.PORT, 10), process.env.HOST || '127.0.0.1');
}
