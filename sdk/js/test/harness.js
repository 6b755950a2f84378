// A small test harness for the SDK's scenarios, run in a real browser against a running PyStacker
// (tests/test_web_sdk.py drives it with Playwright; any page on the meta service's origin can too:
// open test/index.html through a server of the sdk/js folder and call runSdkTest(name, settings)).
// Waits are events or polls with a deadline, never a fixed pause.

export const tests = new Map();

/** A server feature the scenario needs and the server does not have yet (reported, not failed). */
export class NeedsServerFeature extends Error {
  constructor(feature) {
    super(`needs-server: ${feature}`);
    this.name = 'NeedsServerFeature';
  }
}

export function test(name, scenario) {
  if (tests.has(name)) throw new Error(`test ${name} defined twice`);
  tests.set(name, scenario);
}

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

export function equal(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message}: expected ${e}, got ${a}`);
}

/** Poll `check` (sync or async) until it returns a truthy value; its last error or value is reported. */
export async function eventually(check, what, timeout = 10000) {
  const deadline = performance.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (err) {
      last = err;
    }
    if (performance.now() > deadline) throw new Error(`not within ${timeout} ms: ${what} (last: ${last})`);
    await new Promise((resolve) => setTimeout(resolve, 20)); // poll interval, bounded by the deadline
  }
}

/** The next `name` event of `emitter` whose context passes `accept`. */
export function nextEvent(emitter, name, accept = () => true, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${name} event within ${timeout} ms`));
    }, timeout);
    const off = emitter.on(name, (ctx) => {
      if (!accept(ctx)) return;
      clearTimeout(timer);
      off();
      resolve(ctx);
    });
  });
}

export async function run(name, settings) {
  const scenario = tests.get(name);
  if (!scenario) throw new Error(`no such test: ${name}`);
  const cleanups = [];
  try {
    await scenario({ ...settings, cleanup: (fn) => cleanups.push(fn) });
    return 'passed';
  } catch (err) {
    if (err instanceof NeedsServerFeature) return err.message;
    throw err;
  } finally {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        console.error('cleanup failed', err);
      }
    }
  }
}
