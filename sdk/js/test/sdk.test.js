// The SDK's scenarios, run in a real browser against a running PyStacker (tests/test_web_sdk.py runs
// each by name). `settings`: {metaUrl, sendUrl, registryUrl, cleanup}. Every wait has a deadline.

import { Backoff, PyStackerClient, PyStackerError, RoomOrder, State, claimDeviceId, messageFromFrame } from '../pystacker.js';
import { assert, equal, eventually, nextEvent, test } from './harness.js';

const PASSWORD = 'sdk-secret-1';
let counter = 0;

function uniqueName(prefix) {
  counter += 1;
  return `${prefix}${Date.now().toString(36)}${counter}${Math.floor(Math.random() * 1e6).toString(36)}`;
}

/** A registered, logged-in client; `connect` also opens its socket and waits for `connected`. */
async function newUser(settings, { connect = false } = {}) {
  const client = new PyStackerClient(settings);
  const name = uniqueName('u');
  const userId = await client.register(name, PASSWORD);
  await client.login(name, PASSWORD);
  equal(client.userId, userId, 'login keeps the user id of register');
  settings.cleanup(() => client.logout());
  if (connect) await connected(client);
  return client;
}

async function connected(client) {
  const ready = client.state === State.Connected ? null : nextEvent(client, 'connected', () => true, 15000);
  client.connect();
  if (ready) await ready;
}

/** Every message event of `client`, kept in arrival order. */
function collect(client) {
  const seen = [];
  client.on('message', (m) => seen.push(m));
  return seen;
}

function textsOf(messages, roomId) {
  return messages.filter((m) => m.roomId === roomId).map((m) => m.text);
}

// -- pure parts -------------------------------------------------------------------------------------

test('backoff is jittered, exponential and capped', async () => {
  const draws = [0, 1, 0.5, 1, 1, 1, 1, 1];
  const backoff = new Backoff({ initial: 0.5, maxDelay: 4, factor: 2, random: () => (draws.length ? draws.shift() : 1) });
  const delays = Array.from({ length: 8 }, () => backoff.next());
  equal(delays.slice(0, 4), [0.25, 1, 1.5, 4], 'the n-th delay is in [d/2, d] with d = 0.5 * 2^(n-1)');
  assert(delays.slice(4).every((d) => d === 4), `capped at maxDelay: ${delays}`);
  backoff.reset();
  assert(backoff.next() <= 0.5, 'reset starts over');
});

test('room order hands each seq on once, in order, holding what comes after a hole', async () => {
  const order = new RoomOrder();
  const m = (seq) => messageFromFrame({ type: 'chat', id: seq, room_id: 7, seq, sender_id: 1, payload: { text: `m${seq}` } });
  order.setPosition(7, 2);
  equal(order.offer(m(2)).map((x) => x.seq), [], 'a seq at or below the position is a duplicate');
  equal(order.offer(m(4)).map((x) => x.seq), [], 'a seq after a hole is held');
  equal(order.gaps(), [[7, 2]], 'the hole is reported from the position');
  equal(order.offer(m(3)).map((x) => x.seq), [3, 4], 'filling the hole releases the held one');
  equal(order.offer(m(4)).map((x) => x.seq), [], 'a held seq released once is not handed on again');
  equal(order.position(7), 4, 'the position is the last seq handed on');
  equal(messageFromFrame({ id: 1, id_str: '2128915732807815168', type: 'chat', room_id: 1, seq: 1 }).id,
    '2128915732807815168', 'ids are id_str: snowflakes exceed 2^53');
});

// -- accounts and rooms -------------------------------------------------------------------------------

test('register, login, rooms, members and join requests', async (settings) => {
  const owner = await newUser(settings);
  const member = await newUser(settings);
  const asker = await newUser(settings);
  const name = uniqueName('room-');
  const roomId = await owner.createRoom(name, [member.userId]);
  const info = await owner.roomInfo(roomId);
  equal([info.name, info.isGroup, info.memberCount], [name, true, 2], 'room info');
  equal((await member.members(roomId)).map((m) => [m.userId, m.role]).sort(),
    [[owner.userId, 0], [member.userId, 2]].sort(), 'the creator is owner (0), the others members (2)');
  assert((await member.joinedRooms()).roomIds.includes(roomId), 'the member sees the room in joined_rooms');

  const requestId = await asker.requestJoin(roomId, 'let me in');
  const requests = await owner.joinRequests(roomId);
  equal(requests.map((r) => [r.requestId, r.userId, r.message]), [[requestId, asker.userId, 'let me in']], 'pending requests');
  await owner.respondJoin(requestId, true);
  assert((await owner.members(roomId)).some((m) => m.userId === asker.userId), 'an approved asker is a member');
  equal(await owner.joinRequests(roomId), [], 'an answered request is no longer pending');

  const refusal = await member.joinRequests(roomId).then(() => null, (err) => err);
  assert(refusal instanceof PyStackerError && refusal.status === 403, `a member may not see requests: ${refusal}`);

  const privateId = await owner.createRoom('dm', [member.userId], { isGroup: false });
  equal((await owner.roomInfo(privateId)).isGroup, false, 'a private room');
  const added = await owner.addMembers(privateId, [asker.userId]).then(() => null, (err) => err);
  assert(added instanceof PyStackerError && added.status === 400, `a private room keeps two members: ${added}`);

  const wrong = await new PyStackerClient(settings).login(uniqueName('nobody'), 'x').then(() => null, (err) => err);
  assert(wrong instanceof PyStackerError && wrong.status === 401, `a wrong login is a 401: ${wrong}`);
});

test('an expired or refused token is renewed by logging in again', async (settings) => {
  const client = await newUser(settings);
  const good = client.token;
  client.useToken('not.a.token'); // unreadable claims count as expired: renewed before the call
  equal((await client.profile()).user_id, client.userId, 'profile after a renewal');
  assert(client.token !== 'not.a.token', 'a new token');
  // A well-formed token with a wrong signature and a future exp: the server's 401 makes the SDK log in again.
  const [head, body] = good.split('.');
  client.useToken(`${head}.${body}.${'A'.repeat(43)}`);
  equal((await client.profile()).user_id, client.userId, 'profile after a 401 and a new login');
  const anonymous = new PyStackerClient(settings);
  const refusal = await anonymous.profile().then(() => null, (err) => err);
  assert(refusal instanceof PyStackerError && refusal.status === 401, 'no token: 401 without a request');
});

// -- the live connection --------------------------------------------------------------------------------

test('connection states, device id, chat both ways, delivery and read state', async (settings) => {
  const ann = await newUser(settings);
  const states = [];
  ann.on('state', ({ newState }) => states.push(newState));
  await connected(ann);
  equal(states, ['connecting', 'connected'], 'state events');
  assert(/^[0-9a-f]{16}$/.test(ann.deviceId), `a device id: ${ann.deviceId}`);
  assert(JSON.parse(localStorage.getItem('pystacker.devices')).includes(ann.deviceId), 'kept in localStorage');

  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('chat-'), [bob.userId]);
  ann.track(roomId, 0);
  bob.track(roomId, 0);
  const annSeen = collect(ann);
  const bobSeen = collect(bob);

  const delivered = nextEvent(ann, 'delivered', (d) => d.roomId === roomId);
  const sent = await ann.send(roomId, 'hello bob');
  equal([sent.roomId, sent.seq, sent.duplicate], [roomId, 1, false], 'send_ok');
  await eventually(() => textsOf(bobSeen, roomId).length === 1, 'bob gets the message');
  equal(bobSeen[0].senderId, ann.userId, 'sender');
  equal((await delivered).seq, 1, 'the ack frame tells ann her message is handed on');

  await bob.send(roomId, 'hello ann');
  await eventually(() => textsOf(annSeen, roomId).join('|') === 'hello bob|hello ann', 'ann sees both, in order');
  await eventually(() => textsOf(bobSeen, roomId).join('|') === 'hello bob|hello ann', 'bob sees his own message once');

  const receipt = nextEvent(ann, 'read', (r) => r.roomId === roomId && r.userId === bob.userId);
  await bob.markRead(roomId, 2);
  equal((await receipt).seq, 2, 'ann gets bob\'s read receipt');
  const marks = await ann.readState(roomId);
  equal(marks.members.get(bob.userId), 2, 'read_state has bob\'s mark');

  const typing = nextEvent(ann, 'typing', (t) => t.roomId === roomId && t.userId === bob.userId);
  bob.typing(roomId);
  equal((await typing).userId, bob.userId, 'ann sees bob typing');

  equal((await ann.presence([bob.userId])).get(bob.userId).online, true, 'bob is online');
  const watched = nextEvent(ann, 'presence', (p) => p.userId === bob.userId);
  ann.watchPresence([bob.userId]);
  equal((await watched).online, true, 'watching starts with bob\'s state');

  const again = await ann.send(roomId, 'once', { clientMsgId: 'fixed-id-1' });
  const repeat = await ann.send(roomId, 'once', { clientMsgId: 'fixed-id-1' });
  equal([repeat.seq, repeat.duplicate], [again.seq, true], 'a repeated client_msg_id gets the first answer');
  await eventually(() => textsOf(bobSeen, roomId).filter((t) => t === 'once').length === 1, 'posted once');
});

test('a client that was away catches up in seq order, once each', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('away-'), [bob.userId]);
  bob.track(roomId, 0);
  const bobSeen = collect(bob);
  await ann.send(roomId, 'm0');
  await eventually(() => textsOf(bobSeen, roomId).length === 1, 'bob has the first message');

  bob.disconnect();
  equal(bob.state, State.Disconnected, 'disconnect() is disconnected');
  const texts = Array.from({ length: 12 }, (_, n) => `m${n + 1}`);
  for (const text of texts) await ann.send(roomId, text);
  await connected(bob);
  await eventually(() => textsOf(bobSeen, roomId).length === 13, 'bob catches up');
  equal(textsOf(bobSeen, roomId), ['m0', ...texts], 'in order');
  equal(bobSeen.map((m) => m.seq), Array.from({ length: 13 }, (_, n) => n + 1), 'seqs 1..13, none twice');
});

test('a send made while disconnected goes out after the reconnect, once', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('queued-'), [bob.userId]);
  bob.track(roomId, 0);
  const bobSeen = collect(bob);
  const reconnecting = nextEvent(ann, 'connecting');
  ann.reconnect(); // as a network failure would: the client reconnects by itself
  await reconnecting;
  const sending = ann.send(roomId, 'queued while away');
  equal(ann.pendingSends(roomId).length, 1, 'the send waits in the outbox');
  const result = await sending;
  equal(result.seq, 1, 'stored after the reconnect');
  equal(ann.pendingSends(roomId), [], 'the outbox is empty once acknowledged');
  await eventually(() => textsOf(bobSeen, roomId).length === 1, 'bob gets it');
  equal(textsOf(bobSeen, roomId), ['queued while away'], 'once');
});

test('history pages from the newest back to the first', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('history-'), []);
  for (let n = 1; n <= 60; n += 1) await ann.send(roomId, `h${n}`);
  const newest = await ann.history(roomId, { limit: 25 });
  equal([newest.lastSeq, newest.hasMore, newest.messages[0].seq, newest.messages.at(-1).seq], [60, true, 36, 60], 'the newest page');
  const pages = [newest];
  while (pages[0].hasMore) pages.unshift(await ann.history(roomId, { beforeSeq: pages[0].messages[0].seq, limit: 25 }));
  const seqs = pages.flatMap((p) => p.messages.map((m) => m.seq));
  equal(seqs, Array.from({ length: 60 }, (_, n) => n + 1), 'every seq once, in order');
  const after = await ann.history(roomId, { afterSeq: 58 });
  equal(after.messages.map((m) => m.text), ['h59', 'h60'], 'a page after a seq');
});

test('claimDeviceId gives each holder its own id and reuses a released one', async () => {
  const key = uniqueName('devices-test-');
  const first = await claimDeviceId({ key });
  const second = await claimDeviceId({ key });
  assert(first !== second, 'two holders in one page (two tabs) never share an id');
  equal(JSON.parse(localStorage.getItem(key)).sort(), [first, second].sort(), 'both kept in localStorage');
  localStorage.removeItem(key);
});
