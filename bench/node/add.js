// Pre-add N small jobs with addBulk: node bench/node/add.js <redis-url> <queue> <n>
'use strict';
const path = require('path');
const { Queue } = require(path.join(__dirname, '../../tests/node/node_modules/bullmq'));
const [url, queue, n] = process.argv.slice(2);
const u = new URL(url);
(async () => {
  const q = new Queue(queue, { connection: { host: u.hostname, port: Number(u.port) } });
  const total = Number(n);
  for (let i = 0; i < total; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(total, i + 1000); j++) batch.push({ name: 'bench', data: { i: j, msg: 'hello', ok: true } });
    await q.addBulk(batch);
  }
  await q.close();
})().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
