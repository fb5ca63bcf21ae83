// Express + ws test app for polyhost's [app] runtime (tests/app_*.rs).
// Listens on the socket polyhost hands over as fd 3 (LISTEN_FDS=1), or on
// $HOST:$PORT when started with `listen = "port"`. Routes:
//   GET  /                   version=$APP_VERSION pid=..
//   GET  /healthz            "ok"
//   GET  /whoami             uid=.. gid=.. pid=.. ppid=.. cgroup=<joined /proc/self/cgroup>
//   GET  /env?name=X         the value of env var X ("<unset>" if absent)
//   POST /echo               the request body back, with its length in X-Body-Length
//   GET  /stream?n=N&ms=M    N chunks "chunk i\n", M ms apart (a streamed response)
//   GET  /headers            the request headers as JSON
//   GET  /slow?ms=M          answers after M ms
//   GET  /hog?mb=N           allocates N MiB (touched) and keeps it, then answers
//   GET  /read?f=PATH        the file's text, or "denied: CODE"
//   GET  /connect?path=SOCK  connects to a Unix socket: "connected" or "denied: CODE"
//   GET  /crash              exits with status 3
//   any other path           404 `unrouted path=<as received> prefix=<X-Forwarded-Prefix>`
//   WS   /ws                 echoes every message
'use strict';
const fs = require('fs');
const http = require('http');
const net = require('net');
const express = require('express');
const { WebSocketServer } = require('ws');

const app = express();
const hogs = [];

app.get('/healthz', (req, res) => res.type('text').send('ok'));

app.get('/whoami', (req, res) => {
  const cgroup = fs.readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n').join(';');
  res.type('text').send(
    `uid=${process.getuid()} gid=${process.getgid()} pid=${process.pid} ppid=${process.ppid} cgroup=${cgroup}`);
});

app.get('/env', (req, res) => {
  const v = process.env[req.query.name];
  res.type('text').send(v === undefined ? '<unset>' : v);
});

app.get('/', (req, res) => {
  res.type('text').send(`version=${process.env.APP_VERSION || 'none'} pid=${process.pid}`);
});

app.post('/echo', (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    res.set('X-Body-Length', String(body.length)).type('application/octet-stream').send(body);
  });
});

app.get('/stream', (req, res) => {
  const n = parseInt(req.query.n || '5', 10);
  const ms = parseInt(req.query.ms || '50', 10);
  res.type('text');
  let i = 0;
  const tick = () => {
    if (i === n) return res.end('done\n');
    res.write(`chunk ${i++}\n`);
    setTimeout(tick, ms);
  };
  tick();
});

app.get('/headers', (req, res) => res.json(req.headers));

app.get('/slow', (req, res) => {
  setTimeout(() => res.type('text').send(`slow pid=${process.pid}`), parseInt(req.query.ms || '1000', 10));
});

app.get('/hog', (req, res) => {
  const mb = parseInt(req.query.mb || '256', 10);
  for (let i = 0; i < mb; i++) hogs.push(Buffer.alloc(1 << 20, 1));
  res.type('text').send(`holding ${hogs.length} MiB pid=${process.pid}`);
});

app.get('/read', (req, res) => {
  try {
    res.type('text').send(fs.readFileSync(req.query.f, 'utf8'));
  } catch (e) {
    res.type('text').send(`denied: ${e.code}`);
  }
});

app.get('/connect', (req, res) => {
  const s = net.connect(req.query.path);
  s.on('connect', () => { s.destroy(); res.type('text').send('connected'); });
  s.on('error', (e) => res.type('text').send(`denied: ${e.code}`));
});

app.get('/crash', () => process.exit(3));

// Any other path: 404, naming what the app saw (its mount prefix included).
app.use((req, res) => {
  res.status(404).type('text').send(
    `unrouted path=${req.originalUrl} prefix=${req.headers['x-forwarded-prefix'] || '-'}`);
});

const server = http.createServer(app);
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })));

if (process.env.LISTEN_FDS) {
  server.listen({ fd: 3 }, () => console.log(`express-app: pid ${process.pid} listening on fd 3`));
} else {
  const port = parseInt(process.env.PORT, 10);
  server.listen(port, process.env.HOST || '127.0.0.1',
    () => console.log(`express-app: pid ${process.pid} listening on port ${port}`));
}
