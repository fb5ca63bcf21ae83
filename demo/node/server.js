// The Node.js demo site: the plain `http` module, no npm packages. polyhost
// binds the site's socket and hands it over as fd 3 (LISTEN_FDS=1), so the
// app listens on { fd: 3 } and never picks a port.
'use strict';
const http = require('http');

const started = new Date().toISOString();
let served = 0;

const server = http.createServer((req, res) => {
  served += 1;
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    return res.end('ok\n');
  }
  const body = [
    'polyhost Node.js demo',
    `node ${process.version}, pid ${process.pid}, uid ${process.getuid()}`,
    `started ${started}, ${served} requests served by this process`,
    `you asked for ${req.method} ${req.url} (X-Forwarded-For: ${req.headers['x-forwarded-for'] || '-'})`,
    `NODE_ENV=${process.env.NODE_ENV || '-'}`,
    '',
  ].join('\n');
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(body);
});

server.listen({ fd: 3 }, () => console.log(`node demo: pid ${process.pid} listening on fd 3`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
