// bull-board (the real @bull-board/api + @bull-board/express) for queues that
// bullpen processes: bullpen writes BullMQ's own job hashes, so the stock
// BullMQAdapter is all it takes. Also drives a Chromium the caller started.
//
//   node dashboard.js serve  <redis-url> <queue>[,<queue>...] [port]
//       serves bull-board at http://127.0.0.1:<port>/ui (port 0 or none: a free
//       one) and prints {"url": ...} on stdout once listening; runs until killed.
//   node dashboard.js browse <devtools-ws-url> <page-url> <wait-for-text> <screenshot.png|-> [tab...]
//       opens <page-url> in that Chromium (puppeteer-core, no bundled browser),
//       waits until the page shows <wait-for-text>, opens the given tabs of
//       every job card in turn and prints on stdout
//       {"text": <page text>, "jobs": [{"id", "text", "tabs": {<tab>: <card text>}}]}.
'use strict';

function connection(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 6379), maxRetriesPerRequest: null };
}

async function serve(url, queues, port) {
  const express = require('express');
  const { Queue } = require('bullmq');
  const { createBullBoard } = require('@bull-board/api');
  const { BullMQAdapter } = require('@bull-board/api/bullMQAdapter');
  const { ExpressAdapter } = require('@bull-board/express');
  const prefix = process.env.BULLMQ_PREFIX || 'bull';
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath('/ui');
  createBullBoard({
    queues: queues.map((name) => new BullMQAdapter(new Queue(name, { connection: connection(url), prefix }))),
    serverAdapter,
  });
  const app = express();
  app.use('/ui', serverAdapter.getRouter());
  const server = app.listen(Number(port || 0), '127.0.0.1');
  await new Promise((resolve, reject) => { server.once('listening', resolve); server.once('error', reject); });
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${server.address().port}/ui` }) + '\n');
  // Killed by the caller (SIGTERM): exit without waiting for Redis connections.
  process.on('SIGTERM', () => process.exit(0));
}

async function browse(wsUrl, pageUrl, waitFor, screenshot, tabs) {
  const puppeteer = require('puppeteer-core');
  const browser = await puppeteer.connect({ browserWSEndpoint: wsUrl, defaultViewport: { width: 1280, height: 800 } });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(60000);
    await page.goto(pageUrl, { waitUntil: 'networkidle0', timeout: 60000 });
    // The UI is a React app that fetches the queue over its JSON API: poll for the text.
    await page.waitForFunction((t) => document.body && document.body.innerText.includes(t), { polling: 200 }, waitFor);
    const text = await page.evaluate(() => document.body.innerText);
    // One card per job, each with its own tab list (Data, Progress, Logs, Error...).
    const jobs = [];
    for (const tablist of await page.$$('[role=tablist]')) {
      const card = await tablist.evaluateHandle((t) => t.closest('[class*="card-"]') || t.parentElement);
      const cardText = () => card.evaluate((c) => c.innerText);
      const first = await cardText();
      const job = { id: (first.match(/#(\S+)/) || [])[1] || null, text: first, tabs: {} };
      for (const tab of tabs) {
        const button = await tablist.evaluateHandle((t, name) => [...t.querySelectorAll('[role=tab]')].find((b) => b.innerText.trim() === name) || null, tab);
        if (!(await button.evaluate((b) => b !== null))) { job.tabs[tab] = null; continue; }
        await button.click();
        // Logs are fetched when their tab opens: wait for the network, then for the text to settle.
        await page.waitForNetworkIdle({ idleTime: 300, timeout: 30000 }).catch(() => {});
        let before = '', now = await cardText();
        for (let i = 0; i < 50 && now !== before; i++) {
          await new Promise((r) => setTimeout(r, 200));
          before = now;
          now = await cardText();
        }
        job.tabs[tab] = now;
      }
      jobs.push(job);
    }
    if (screenshot && screenshot !== '-') {
      await page.evaluate(() => document.querySelectorAll('*').forEach((e) => { if (e.scrollTop) e.scrollTop = 0; }));
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: screenshot, type: 'png' });
    }
    await page.close();
    return { text, jobs };
  } finally {
    await browser.disconnect();
  }
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === 'serve') {
    await serve(args[0], args[1].split(','), args[2]);
  } else if (cmd === 'browse') {
    const out = await browse(args[0], args[1], args[2], args[3], args.slice(4));
    await new Promise((resolve) => process.stdout.write(JSON.stringify(out) + '\n', resolve));
    process.exit(0);
  } else {
    throw new Error(`unknown command ${cmd}: use serve or browse`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
