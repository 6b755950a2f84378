// The SDK's scenarios, run in a real browser against a running PyStacker (tests/test_web_sdk.py runs
// each by name). `settings`: {metaUrl, sendUrl, registryUrl, cleanup}. Every wait has a deadline.

import { Backoff, PyStackerClient, PyStackerError, RoomOrder, State, applyEvent, claimDeviceId, eventFromFrame,
  messageFromFrame } from '../pystacker.js';
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

/** Every entry of the room's log `client` hands on (messages and edit, recall, reaction events), in order. */
function collectLog(client) {
  const seen = [];
  for (const name of ['message', 'edit', 'recall', 'reaction']) client.on(name, (entry) => seen.push(entry));
  return seen;
}

async function refusal(promise) {
  return promise.then((value) => { throw new Error(`expected a refusal, got ${JSON.stringify(value)}`); },
    (err) => err);
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

test('events apply to messages: edits, recalls, reactions and reply quotes, idempotently', async () => {
  const big = '2128915732807815168'; // beyond 2^53: stays a string throughout
  const frame = (type, seq, extra) => ({ type, id: seq, id_str: String(9000 + seq), room_id: 7, sender_id: 2, seq,
    message_id: Number(big), message_id_str: big, payload: null, ...extra });
  const original = messageFromFrame({ type: 'chat', id: Number(big), id_str: big, room_id: 7, seq: 1, sender_id: 1,
    payload: { text: 'first' }, content_type: 'text' });
  equal([original.kind, original.replyTo, original.editedAt, original.recalled, original.reactions],
    ['message', null, null, false, []], 'a plain message');
  const reply = messageFromFrame({ type: 'chat', id: 5, id_str: '5', room_id: 7, seq: 2, sender_id: 2, payload: { text: 're' },
    reply_to: { message_id: Number(big), message_id_str: big, sender_id: 1, preview: 'first', recalled: false } });
  equal(reply.replyTo, { messageId: big, senderId: 1, preview: 'first', recalled: false }, 'a reply quotes by id_str');

  const edit = eventFromFrame(frame('edit', 3, { sender_id: 1, content: { type: 'text', text: 'second' }, edited_at: 1000 }));
  equal([edit.kind, edit.messageId, edit.text, edit.editedAt], ['edit', big, 'second', 1000], 'an edit event');
  const edited = applyEvent(original, edit, 2);
  equal([edited.text, edited.content, edited.editedAt], ['second', { type: 'text', text: 'second' }, 1000], 'edited');
  equal(original.text, 'first', 'applyEvent leaves its argument alone');
  equal(applyEvent(reply, edit).replyTo.preview, 'second', 'a quote follows the edit of what it quotes');

  const reacted = (userId, on, count, seq) => eventFromFrame(frame('reaction', seq, { sender_id: userId, user_id: userId, emoji: '👍', on, count }));
  let state = applyEvent(edited, reacted(3, true, 1, 4), 2);
  equal(state.reactions, [{ emoji: '👍', count: 1, me: false }], 'another member reacted');
  state = applyEvent(state, reacted(2, true, 2, 5), 2);
  equal(state.reactions, [{ emoji: '👍', count: 2, me: true }], 'my reaction is marked');
  equal(applyEvent(state, reacted(2, true, 2, 5), 2), state, 'applying an event twice changes nothing');
  state = applyEvent(applyEvent(state, reacted(2, false, 1, 6), 2), reacted(3, false, 0, 7), 2);
  equal(state.reactions, [], 'taken back: an emoji with no count is gone');

  const recall = eventFromFrame(frame('recall', 8, { sender_id: 1, by: 1, recalled_at: 2000 }));
  const tombstone = applyEvent(state, recall, 2);
  equal([tombstone.recalled, tombstone.recalledBy, tombstone.recalledAt, tombstone.text, tombstone.content],
    [true, 1, 2000, null, { type: 'text' }], 'a tombstone');
  equal(applyEvent(tombstone, edit).text, null, 'an edit never revives a tombstone');
  equal(applyEvent(reply, recall).replyTo, { messageId: big, senderId: 1, preview: '', recalled: true }, 'the quote of a recalled message');
  equal(eventFromFrame({ type: 'chat', id: 1 }), null, 'a chat frame is no event');
  const blanked = eventFromFrame(frame('edit', 3, { sender_id: 1, content: null, edited_at: 1000 }));
  equal([blanked.content, blanked.text], [null, null], 'an edit blanked by a later recall has no content');
  equal([applyEvent(original, blanked), applyEvent(reply, blanked)], [original, reply], 'and changes nothing');

  const fromHistory = messageFromFrame({ type: 'chat', id: 6, id_str: '6', room_id: 7, seq: 9, sender_id: 1, payload: {},
    recalled: true, recalled_by: 4, recalled_at: 3000, reactions: [{ emoji: '🎉', count: 2, me: true }] });
  equal([fromHistory.recalled, fromHistory.recalledBy, fromHistory.text, fromHistory.reactions],
    [true, 4, null, [{ emoji: '🎉', count: 2, me: true }]], 'a history tombstone with reactions');

  const order = new RoomOrder();
  order.setPosition(7, 2);
  equal(order.offer(edit).map((e) => e.seq), [3], 'an event is handed on by its seq like a message');
  equal(order.offer(reacted(3, true, 1, 5)).map((e) => e.seq), [], 'an event after a hole is held');
  equal(order.offer(reacted(3, true, 1, 4)).map((e) => [e.kind, e.seq]), [['reaction', 4], ['reaction', 5]], 'released in order');
  equal(order.offer(edit), [], 'an event is handed on once');
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

// -- the message lifecycle ------------------------------------------------------------------------------

test('replies, edits, reactions and recalls reach the other member live, in seq order with the messages', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('lifecycle-'), [bob.userId]); // ann owns it
  ann.track(roomId, 0);
  bob.track(roomId, 0);
  const annLog = collectLog(ann);
  const bobLog = collectLog(bob);

  const first = await ann.send(roomId, 'first');
  assert(typeof first.id === 'string' && /^[0-9]+$/.test(first.id), `ids are strings: ${first.id}`);
  const reply = await bob.send(roomId, 'an answer', { replyTo: first.id });
  const quoted = await eventually(() => annLog.find((e) => e.kind === 'message' && e.id === reply.id), 'ann gets the reply');
  equal(quoted.replyTo, { messageId: first.id, senderId: ann.userId, preview: 'first', recalled: false }, 'the reply quotes the first');

  const edited = await ann.edit(first.id, 'first, edited');
  equal([edited.messageId, edited.roomId, edited.duplicate], [first.id, roomId, false], 'edit_ok');
  assert(edited.seq > reply.seq && typeof edited.editedAt === 'number', `the edit has its own seq: ${JSON.stringify(edited)}`);
  const edit = await eventually(() => bobLog.find((e) => e.kind === 'edit'), 'bob gets the edit');
  equal([edit.messageId, edit.senderId, edit.text, edit.seq, edit.editedAt], [first.id, ann.userId, 'first, edited', edited.seq, edited.editedAt], 'the edit event');

  const liked = await bob.react(first.id, '👍');
  equal([liked.emoji, liked.on, liked.count, liked.duplicate], ['👍', true, 1, false], 'react_ok');
  const again = await ann.react(first.id, '👍', true, { clientMsgId: 'react-once-1' });
  const repeat = await ann.react(first.id, '👍', true, { clientMsgId: 'react-once-1' });
  equal([again.count, repeat.count, repeat.duplicate], [2, 2, true], 'a repeated client_msg_id counts once');
  const unliked = await bob.react(first.id, '👍', false);
  equal([unliked.on, unliked.count], [false, 1], 'taken back');
  await eventually(() => annLog.filter((e) => e.kind === 'reaction').length === 3, 'ann gets three reaction events');
  equal(annLog.filter((e) => e.kind === 'reaction').map((e) => [e.userId, e.emoji, e.on, e.count]),
    [[bob.userId, '👍', true, 1], [ann.userId, '👍', true, 2], [bob.userId, '👍', false, 1]], 'the reaction events');

  const second = await bob.send(roomId, 'second');
  const refusedEdit = await refusal(ann.edit(second.id, 'not mine'));
  assert(refusedEdit instanceof PyStackerError && refusedEdit.status === 403, `only the sender edits: ${refusedEdit}`);
  const refusedRecall = await refusal(bob.recall(first.id));
  assert(refusedRecall instanceof PyStackerError && refusedRecall.status === 403, `a member recalls only his own: ${refusedRecall}`);
  const recalled = await ann.recall(second.id); // the owner recalls any message
  equal([recalled.messageId, recalled.duplicate], [second.id, false], 'recall_ok');
  const recall = await eventually(() => bobLog.find((e) => e.kind === 'recall'), 'bob gets the recall');
  equal([recall.messageId, recall.by, recall.senderId], [second.id, ann.userId, ann.userId], 'recalled by the owner');
  const tooLate = await refusal(bob.edit(second.id, 'after the recall'));
  assert(tooLate instanceof PyStackerError && tooLate.status === 409, `a recalled message is not edited: ${tooLate}`);

  const last = await ann.send(roomId, 'last');
  for (const [name, log] of [['ann', annLog], ['bob', bobLog]]) {
    await eventually(() => log.some((e) => e.kind === 'message' && e.id === last.id), `${name} gets the last message`);
    const seqs = log.filter((e) => e.roomId === roomId).map((e) => e.seq);
    equal(seqs, Array.from({ length: last.seq }, (_, n) => n + 1), `${name} gets messages and events in one dense seq order`);
  }
  assert(annLog.every((e) => e.kind === 'message' || typeof e.messageId === 'string'), 'event ids are strings');
});

test('history shows the current state; a hidden message is gone for the one who hid it only', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('state-'), [bob.userId]);
  const first = await ann.send(roomId, 'first');
  const reply = await bob.send(roomId, 'reply', { replyTo: first.id });
  const gone = await bob.send(roomId, 'to be recalled');
  const hidden = await ann.send(roomId, 'bob hides this');
  await ann.edit(first.id, 'first, edited');
  await bob.react(first.id, '🎉');
  await ann.react(first.id, '🎉');
  await ann.react(first.id, '❤️');
  await bob.recall(gone.id);
  equal(await bob.hide(hidden.id), { messageId: hidden.id, roomId }, 'hide answers with the message and the room');

  const byId = (page) => new Map(page.messages.map((m) => [m.id, m]));
  const bobs = byId(await bob.history(roomId));
  equal([...bobs.keys()], [first.id, reply.id, gone.id], 'bob\'s history leaves out what he hid');
  const now = bobs.get(first.id);
  equal([now.text, typeof now.editedAt], ['first, edited', 'number'], 'the edited content');
  equal(now.reactions.map((r) => [r.emoji, r.count, r.me]).sort(), [['❤️', 1, false], ['🎉', 2, true]].sort(), 'reactions with me');
  equal([bobs.get(reply.id).replyTo.messageId, bobs.get(reply.id).replyTo.senderId], [first.id, ann.userId], 'the reply\'s quote');
  equal([bobs.get(gone.id).recalled, bobs.get(gone.id).recalledBy, bobs.get(gone.id).text], [true, bob.userId, null], 'a tombstone');

  const anns = byId(await ann.history(roomId));
  assert(anns.has(hidden.id), 'hiding is for the hider only');
  equal(anns.get(first.id).reactions.find((r) => r.emoji === '❤️').me, true, 'ann\'s own reaction');

  const log = await ann.history(roomId, { events: true });
  equal(log.entries.map((e) => e.kind), ['message', 'message', 'message', 'message', 'edit', 'reaction', 'reaction', 'reaction', 'recall'],
    'events=1: the log as written');
  equal(log.entries.map((e) => e.seq), Array.from({ length: 9 }, (_, n) => n + 1), 'by seq');
});

test('a client that was away gets edits, reactions and recalls in its catch-up, in order', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('away-events-'), [bob.userId]);
  bob.track(roomId, 0);
  const bobLog = collectLog(bob);
  const first = await ann.send(roomId, 'first');
  await eventually(() => bobLog.length === 1, 'bob has the first message');

  bob.disconnect();
  await ann.edit(first.id, 'edited while bob was away');
  await ann.react(first.id, '😮');
  const second = await ann.send(roomId, 'second');
  await ann.edit(second.id, 'second, edited');
  await ann.recall(second.id);
  await connected(bob);
  await eventually(() => bobLog.length === 6, 'bob catches up on the events too');
  equal(bobLog.map((e) => [e.kind, e.seq]),
    [['message', 1], ['edit', 2], ['reaction', 3], ['message', 4], ['edit', 5], ['recall', 6]],
    'messages and events in seq order, once each');
  equal(bob.position(roomId), 6, 'the position counts the events');
  const replay = (message) => bobLog.slice(1).reduce((m, event) => applyEvent(m, event, bob.userId), message);
  const firstNow = replay(bobLog[0]);
  equal([firstNow.text, firstNow.reactions], ['edited while bob was away', [{ emoji: '😮', count: 1, me: false }]], 'applied');
  const secondNow = replay(bobLog[3]);
  equal([secondNow.recalled, secondNow.text, secondNow.recalledBy], [true, null, ann.userId], 'the recalled one is a tombstone');
});

test('an edit or a reaction made while disconnected goes out after the reconnect, once', async (settings) => {
  const ann = await newUser(settings, { connect: true });
  const bob = await newUser(settings, { connect: true });
  const roomId = await ann.createRoom(uniqueName('queued-events-'), [bob.userId]);
  bob.track(roomId, 0);
  const bobLog = collectLog(bob);
  const first = await ann.send(roomId, 'first');
  const reconnecting = nextEvent(ann, 'connecting');
  ann.reconnect();
  await reconnecting;
  const edit = ann.edit(first.id, 'edited after the reconnect');
  const react = ann.react(first.id, '👍');
  equal(ann.pendingOperations().map((op) => [op.kind, op.messageId]), [['edit', first.id], ['react', first.id]], 'queued');
  equal((await edit).seq, 2, 'the edit is stored after the reconnect');
  equal((await react).count, 1, 'the reaction too');
  equal(ann.pendingOperations(), [], 'nothing waits once answered');
  await eventually(() => bobLog.length === 3, 'bob gets both events');
  equal(bobLog.map((e) => e.kind), ['message', 'edit', 'reaction'], 'once each');

  assert(Number(first.id) > Number.MAX_SAFE_INTEGER, `a snowflake id is past 2^53: ${first.id}`);
  let thrown = null;
  try {
    ann.recall(Number(first.id)); // such a JavaScript number is not the id any more: refused before it is sent
  } catch (err) {
    thrown = err;
  }
  assert(thrown instanceof TypeError, `a number past 2^53 is refused: ${thrown}`);
  equal(ann.pendingOperations(), [], 'and nothing is queued');
});
