// SPDX-License-Identifier: MIT
// The Node baseline for netd's echo handler: what a user would write with the net module.
// Usage: node node-echo.js PORT|PATH [HOST]   (HOST default 127.0.0.1; a PATH contains '/')
'use strict';
const net = require('net');
const fs = require('fs');

const where = process.argv[2];
const host = process.argv[3] || '127.0.0.1';
if (!where) {
  console.error('usage: node node-echo.js PORT|PATH [HOST]');
  process.exit(2);
}

// noDelay matches netd's default, so neither side pays Nagle's delays in the comparison.
const server = net.createServer({ noDelay: true }, (c) => {
  // A client that resets (the load generator closes with RST) must not crash the server.
  c.on('error', () => c.destroy());
  c.pipe(c);
});
server.on('error', (err) => {
  console.error(`node-echo: ${err.message}`);
  process.exit(1);
});

if (where.includes('/')) {
  try { fs.unlinkSync(where); } catch (e) { /* not there: fine */ }
  server.listen(where);
} else {
  server.listen(Number(where), host);
}
