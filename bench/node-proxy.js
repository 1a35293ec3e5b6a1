// SPDX-License-Identifier: MIT
// The Node baseline for netd's proxy handler: each client is piped to a new upstream
// connection and back. Usage: node node-proxy.js PORT UPSTREAM_PORT [HOST [UPSTREAM_HOST]]
'use strict';
const net = require('net');

const port = Number(process.argv[2]);
const upPort = Number(process.argv[3]);
const host = process.argv[4] || '127.0.0.1';
const upHost = process.argv[5] || '127.0.0.1';
if (!port || !upPort) {
  console.error('usage: node node-proxy.js PORT UPSTREAM_PORT [HOST [UPSTREAM_HOST]]');
  process.exit(2);
}

const server = net.createServer({ noDelay: true }, (c) => {
  const u = net.connect({ port: upPort, host: upHost, noDelay: true });
  // Either side failing ends both; without handlers a reset would crash the process.
  c.on('error', () => u.destroy());
  u.on('error', () => c.destroy());
  c.on('close', () => u.destroy());
  u.on('close', () => c.destroy());
  c.pipe(u).pipe(c);
});
server.on('error', (err) => {
  console.error(`node-proxy: ${err.message}`);
  process.exit(1);
});
server.listen(port, host);
