// Opens the status page in Debian's Chromium (puppeteer-core, no downloaded browser) the way
// a venue technician would on a phone, and checks what they rely on: the page loads with
// no console error, it lists a recording made by the test, its player plays that
// recording and a live stream (the video's clock passes 3 s, hls.js reports no error), and
// a screenshot shows it. Prints one JSON line of findings; exits 1 on any failure.
//
//   node page_check.mjs BASE_URL RECORDED_STREAM LIVE_STREAM SCREENSHOT.png

import puppeteer from "puppeteer-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const [base, recorded, live, screenshot] = process.argv.slice(2);
const findings = { console_errors: [], recorded: null, live: null };

function fail(message) {
  throw new Error(message);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "edgerec-chromium-"));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // As root in a container: no sandbox. This machine's network is closed: no background
  // traffic, or Chromium's refused connections flood the log.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", `--user-data-dir=${profile}`,
  ],
});

try {
  const page = await browser.newPage();
  // A phone's viewport.
  await page.setViewport({ width: 412, height: 915, deviceScaleFactor: 1, isMobile: true });
  page.on("console", (m) => {
    if (m.type() === "error") findings.console_errors.push(m.text());
  });
  page.on("pageerror", (e) => findings.console_errors.push(String(e)));
  await page.goto(base + "/", { waitUntil: "load", timeout: 30000 });

  // Waits for `stream`'s row in table `tbody` (the page refreshes its lists itself) and
  // presses its play button.
  const pressPlay = async (tbody, stream) => {
    const row = (tbody, stream) => [...document.querySelectorAll(`#${tbody} tr`)].find((tr) =>
      tr.textContent.includes("/" + stream) && tr.querySelector("button.play"));
    await page.waitForFunction(`(${row})(${JSON.stringify(tbody)}, ${JSON.stringify(stream)}) !== undefined`,
      { timeout: 30000, polling: 500 });
    await page.evaluate(`(${row})(${JSON.stringify(tbody)}, ${JSON.stringify(stream)}).querySelector("button.play").click()`);
  };

  // Waits until the player's clock has moved more than 3 s past `from` with no error.
  const playsPast = async (what, from) => {
    try {
      await page.waitForFunction((from) => {
        const v = document.getElementById("video");
        return v.currentTime > from + 3 && document.getElementById("player-error").textContent === "";
      }, { timeout: 40000, polling: 250 }, from);
    } catch (e) {
      const state = await page.evaluate(() => ({
        time: document.getElementById("video").currentTime,
        error: document.getElementById("player-error").textContent,
        readyState: document.getElementById("video").readyState,
      }));
      fail(`${what} did not play 3 s: ${JSON.stringify(state)}`);
    }
    return page.evaluate(() => document.getElementById("video").currentTime);
  };

  await pressPlay("recordings", recorded);
  findings.recorded = await playsPast("the recording", 0);

  await pressPlay("live", live);
  // The player restarts at the live edge; its clock has to move past 3 s from there.
  await page.waitForFunction(() => document.getElementById("player-title").textContent.startsWith("Live"),
    { timeout: 5000 });
  const liveStart = await page.evaluate(() => document.getElementById("video").currentTime);
  findings.live = (await playsPast("the live stream", liveStart)) - liveStart;

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: screenshot, fullPage: true });
  findings.health = await page.evaluate(() => document.getElementById("health").textContent);
  if (findings.console_errors.length) fail("console errors");
} catch (e) {
  findings.failure = String((e && e.message) || e);
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(findings));
process.exit(findings.failure ? 1 : 0);
