// The dashboard as a person uses it, in Debian's headless Chromium driven by Playwright, against
// the example server (scripts/browser-test.sh starts it on 127.0.0.1 and passes its address):
// sign in with a management key, create a key, copy its secret once, watch it get used, revoke
// it, rotate another with an overlap, and fail to sign in with a key that may not manage keys.
//
//   BASE=http://127.0.0.1:3000 SCREENSHOT=../../docs/dashboard.png node dashboard.mjs
//
// Each check prints one line; the last line is "N passed, N failed". A failed check stops the
// run (the later ones build on it) and the process exits 1.
import { chromium } from "playwright-core";

const BASE = process.env.BASE;
const SCREENSHOT = process.env.SCREENSHOT;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
if (!BASE || !BASE.startsWith("http://127.0.0.1:")) {
  console.error("BASE must be the example server on 127.0.0.1, e.g. http://127.0.0.1:3000");
  process.exit(2);
}

let passed = 0;
let failed = 0;

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

function equal(actual, expected, what) {
  assert(actual === expected, `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

async function check(name, body) {
  try {
    await body();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${name}\n  ${e.stack ?? e}`);
    throw e;
  }
}

/** A key minted by the example's development endpoint. */
async function seed(body) {
  const res = await fetch(`${BASE}/dev/seed`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  equal(res.status, 201, "POST /dev/seed status");
  return res.json();
}

/** The status of an API request made with `key`: 404 for the unknown session means authenticated. */
async function apiStatus(key) {
  const res = await fetch(`${BASE}/v1/browsers/none`, {
    headers: { authorization: `Bearer ${key}` },
  });
  return res.status;
}

/** The table row of the key named `name` (one such key is expected). */
function row(page, name) {
  return page.locator("table.keys tbody tr", {
    has: page.locator('td[data-col="name"]', { hasText: new RegExp(`^${name}$`) }),
  });
}

async function cell(page, name, col) {
  return (await row(page, name).locator(`td[data-col="${col}"]`).innerText()).trim();
}

async function signIn(page, key) {
  await page.goto(`${BASE}/dashboard`);
  equal(new URL(page.url()).pathname, "/dashboard/sign-in", "unauthenticated page redirects to");
  await page.fill("#key", key);
  await page.click('button:has-text("Sign in")');
}

/** Create a key in the dashboard; returns the secret shown and the page it is shown on. */
async function createKey(page, name, scopes) {
  await page.goto(`${BASE}/dashboard`);
  await page.click("text=Create new key");
  equal(await page.locator("h1").innerText(), "Create new key", "form heading");
  await page.fill("#name", name);
  for (const scope of scopes) await page.check(`input[name="scope"][value="${scope}"]`);
  await page.click('button:has-text("Create key")');
  await page.waitForSelector("#new-secret");
  return page.inputValue("#new-secret");
}

const started = Date.now();
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // Root in a container has no user namespace sandbox to give Chromium.
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 820 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  const page = await context.newPage();
  const manager = await seed({
    name: "dashboard admin",
    scopes: ["api_keys:manage", "browser_sessions:read", "browser_sessions:create"],
  });
  let secret;

  await check("sign in with a management key opens API Keys", async () => {
    await signIn(page, manager.key);
    equal(new URL(page.url()).pathname, "/dashboard", "after sign-in");
    equal(await page.locator("h1").innerText(), "API Keys", "heading");
  });

  await check("create a key with two permissions: its secret is shown once and Copy copies it", async () => {
    secret = await createKey(page, "ci-pipeline", ["browser_sessions:read", "browser_sessions:create"]);
    assert(/^br_live_[0-9A-Za-z]{32}$/.test(secret), `a br_live_ key: ${secret}`);
    assert((await page.content()).includes("only shown once"), "says it is only shown once");
    await page.click('button:has-text("Copy")');
    await page.waitForSelector('button:has-text("Copied")');
    equal(await page.evaluate(() => navigator.clipboard.readText()), secret, "clipboard");
  });

  await check("reloading the answer does not show the secret again", async () => {
    // Chromium resubmits the form on reload; the spent one-time form token makes it a no-op.
    const reloaded = await page.reload();
    equal(reloaded?.status(), 409, "status of the reloaded answer");
    equal(await page.locator("h1").innerText(), "Already submitted", "heading after reload");
    assert(!(await page.content()).includes(secret), "secret gone after reload");
    await page.goBack().catch(() => {});
    assert(!(await page.content()).includes(secret), "secret gone after going back");
  });

  await check("the key is listed with its two permissions and Never used", async () => {
    await page.goto(`${BASE}/dashboard`);
    equal(await row(page, "ci-pipeline").count(), 1, "rows named ci-pipeline");
    const perms = await row(page, "ci-pipeline").locator('td[data-col="permissions"] code').allInnerTexts();
    equal(perms.sort().join(","), "browser_sessions:create,browser_sessions:read", "permissions");
    equal(await cell(page, "ci-pipeline", "last-used"), "Never", "last used");
    assert(!(await page.content()).includes(secret), "no secret in the list");
  });

  await check("the key authenticates against the API", async () => {
    equal(await apiStatus(secret), 404, "GET /v1/browsers/none with the new key");
  });

  await check("after the last-used flush the list shows when it was used", async () => {
    const deadline = Date.now() + 10_000;
    let lastUsed = "Never";
    while (lastUsed === "Never" && Date.now() < deadline) {
      await page.waitForTimeout(200); // poll interval of a bounded wait, not a synchronization
      await page.reload();
      lastUsed = await cell(page, "ci-pipeline", "last-used");
    }
    assert(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$/.test(lastUsed), `last used shows a time: ${lastUsed}`);
  });

  await check("revoke asks first, then the API refuses the key with 401", async () => {
    await row(page, "ci-pipeline").locator("text=Revoke").click();
    assert((await page.content()).includes("Revocation is permanent"), "confirmation says permanent");
    await page.click('button:has-text("Revoke key")');
    equal(new URL(page.url()).pathname, "/dashboard", "back on the list");
    equal(await cell(page, "ci-pipeline", "status"), "Revoked", "status");
    equal(await apiStatus(secret), 401, "API status with the revoked key");
  });

  await check("Activity lists the revocation first, by the signed-in person", async () => {
    await page.click('nav a:has-text("Activity")');
    equal(new URL(page.url()).pathname, "/dashboard/activity", "Activity link goes to");
    const first = page.locator('table[data-table="activity"] tbody tr').first();
    equal(await first.locator('td[data-col="what"]').getAttribute("data-action"), "key_revoked", "newest action");
    assert((await first.locator('td[data-col="who"]').innerText()).startsWith("user"), "done by a user");
  });

  await check("Alerts, above the audit log, say the revoked key is still in use", async () => {
    // The server reports dead keys every 200 ms (--flush-interval-ms): a bounded wait.
    const alert = page.locator('table[data-table="alerts"] tr[data-kind="dead_key_presented"]');
    const deadline = Date.now() + 10_000;
    while ((await alert.count()) === 0 && Date.now() < deadline) {
      await page.waitForTimeout(200); // poll interval of a bounded wait, not a synchronization
      await page.reload();
    }
    equal(await alert.count(), 1, "dead key alerts");
    equal(await alert.locator('td[data-col="what"]').innerText(), "Revoked key still in use (once)", "alert text");
  });

  await check("rotate with a 1 hour overlap: the old and the new key both work", async () => {
    const old = await createKey(page, "worker", ["browser_sessions:read"]);
    await page.goto(`${BASE}/dashboard`);
    await row(page, "worker").locator("text=Rotate").click();
    await page.check('input[name="overlap"][value="1h"]');
    await page.click('button:has-text("Rotate key")');
    await page.waitForSelector("#new-secret");
    const rotated = await page.inputValue("#new-secret");
    assert(rotated !== old && rotated.startsWith("br_live_"), "a new secret");
    assert((await page.content()).includes("only shown once"), "shown once");
    equal(await apiStatus(old), 404, "old key inside the overlap");
    equal(await apiStatus(rotated), 404, "new key");
    await page.goto(`${BASE}/dashboard`);
    equal(await row(page, "worker").count(), 2, "old and new rows named worker");
  });

  if (SCREENSHOT) {
    await check(`screenshot of API Keys to ${SCREENSHOT}`, async () => {
      await page.goto(`${BASE}/dashboard`);
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    });
  }

  await check("a key without api_keys:manage cannot sign in", async () => {
    const reader = await seed({ org_id: manager.org_id, scopes: ["browser_sessions:read"] });
    const other = await browser.newContext();
    const p = await other.newPage();
    await signIn(p, reader.key);
    equal(new URL(p.url()).pathname, "/dashboard/sign-in", "still on sign-in");
    const alert = await p.locator('[role="alert"]').innerText();
    assert(alert.includes("lacks the api_keys:manage permission"), `message: ${alert}`);
    await p.goto(`${BASE}/dashboard`);
    equal(new URL(p.url()).pathname, "/dashboard/sign-in", "API Keys needs sign-in");
    await other.close();
  });
} catch {
  // Reported by check(); the summary below still prints.
} finally {
  await browser.close();
  console.log(`browser test took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 && passed > 0 ? 0 : 1;
}
