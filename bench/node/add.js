// Pre-add N small jobs with addBulk: node bench/node/add.js <redis-url> <queue> <n> [<hook-url>]
// With a hook URL, each job is the webhook plugin's: {"url": <hook-url>, "payload": {...}}.
'use strict';
const path = require('path');
const { Queue } = require(path.join(__dirname, '../../tests/node/node_modules/bullmq'));
const [url, queue, n, hook] = process.argv.slice(2);
const u = new URL(url);
(async () => {
  const q = new Queue(queue, { connection: { host: u.hostname, port: Number(u.port) } });
  const total = Number(n);
  for (let i = 0; i < total; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(total, i + 1000); j++) {
      const data = hook
        ? { url: hook, payload: { id: `evt_${j}`, type: 'order.paid', data: { order: j, amount: 4200, currency: 'EUR' } } }
        : { i: j, msg: 'hello', ok: true };
      batch.push({ name: 'bench', data });
    }
    await q.addBulk(batch);
  }
  await q.close();
})().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
