// The console as an operator uses it, in headless Chromium (Debian's, driven by playwright-core):
// log in with the token, find the poisoned adapter's dead letters and their reason, open one and
// see no personal data in clear, replay it through the dry run and the reason prompt, follow the
// progress (also after a reload). Run by tests/console.rs, which prepares the data and checks the
// outbox afterwards.
//
// Environment: CONSOLE_URL, CONSOLE_TOKEN, CHROMIUM (the executable), FORBIDDEN (comma-separated
// strings no page may contain), EXPECT_DLQ (the count the overview must show), SCREENSHOTS (a folder
// for the README's screenshots; optional). Prints one JSON line: what was replayed.
import { chromium } from 'playwright-core';

const url = process.env.CONSOLE_URL;
const token = process.env.CONSOLE_TOKEN;
const forbidden = (process.env.FORBIDDEN || '').split(',').filter(Boolean);
const shots = process.env.SCREENSHOTS;

function check(ok, what) {
  if (!ok) {
    console.error(`console e2e: ${what}`);
    process.exit(1);
  }
}

async function clean(page, where) {
  const html = await page.content();
  for (const f of forbidden) check(!html.includes(f), `${where} shows ${f}`);
  check(!html.includes(token), `${where} shows the token`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1360, height: 820 } });

  // Without the token: 401 and the login form.
  const first = await page.goto(`${url}/`);
  check(first.status() === 401, `the overview without a token answered ${first.status()}`);
  await page.fill('#token', 'not-the-token');
  await Promise.all([page.waitForLoadState(), page.click('button[type=submit]')]);
  check((await page.content()).includes('not the console'), 'a wrong token was not refused');
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(`${url}/`), page.click('button[type=submit]')]);

  // The overview: the poisoned adapter's dead letters and why.
  const row = 'tr[data-adapter="crm"][data-stage="process"]';
  const count = (await page.textContent(`${row} .dlq-count`)).trim();
  check(count === process.env.EXPECT_DLQ, `the overview shows ${count} dead letters, not ${process.env.EXPECT_DLQ}`);
  const reasons = await page.textContent(`${row} .reasons`);
  check(reasons.includes('not mapped to a CRM pipeline'), `the overview's reasons: ${reasons}`);
  await clean(page, 'the overview');
  if (shots) await page.screenshot({ path: `${shots}/console-overview.png`, fullPage: true });

  // The dead letters, then one of them.
  await Promise.all([page.waitForURL(/\/dlq\/crm\/process/), page.click(`${row} .dlq-count a`)]);
  check((await page.locator('#letters tbody tr').count()) === Number(process.env.EXPECT_DLQ), 'the list is short');
  await clean(page, 'the dead-letter list');
  await Promise.all([page.waitForURL(/\/dlq\/crm\/process\/\d+\/\d+/), page.locator('#letters a.record').first().click()]);
  await clean(page, 'the record page');
  const value = await page.textContent('#value');
  check(value.includes('***@'), `the record's value is not shown masked: ${value}`);
  const envelope = await page.textContent('#envelope');
  const eventId = (envelope.match(/event_id\s*([0-9a-f-]{36})/) || [])[1];
  check(eventId, `no event id on the record page: ${envelope}`);
  if (shots) await page.screenshot({ path: `${shots}/console-record.png`, fullPage: true });

  // Replay it: the dry run first, then the reason.
  await Promise.all([page.waitForURL(/\/replays\/preview/), page.click('#replay-one')]);
  check((await page.textContent('#selected')).trim() === '1', 'the dry run does not count one dead letter');
  await page.click('#confirm'); // the reason is required: the browser keeps the form
  check(page.url().endsWith('/replays/preview'), 'a replay without a reason went through');
  await page.fill('#reason', 'form mapped to the sales pipeline');
  await Promise.all([page.waitForURL(/\/replays\/[0-9a-f]+$/), page.click('#confirm')]);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'done', null, { timeout: 60000 });
  check((await page.textContent('#replayed')).trim() === '1', 'the replay did not copy one dead letter');
  await page.reload();
  check((await page.textContent('#status')).trim() === 'done', 'the progress is lost after a reload');
  check((await page.textContent('#replayed')).trim() === '1', 'the count is lost after a reload');

  // The audit log says who, what and why.
  await page.goto(`${url}/audit`);
  check((await page.textContent('#audit')).includes('form mapped to the sales pipeline'), 'the audit log misses the replay');
  console.log(JSON.stringify({ replayed_event: eventId }));
} finally {
  await browser.close();
}
