// PyStacker's JavaScript SDK: one ES module, no dependency, for browsers (and any runtime with fetch
// and WebSocket). It speaks the public wire contract only (docs/compatibility.md) and mirrors the
// Python SDK (src/pystacker/client): HTTP calls return the envelope's `data` or throw PyStackerError;
// the live connection reconnects by itself, catches up by seq, and hands each room's messages to the
// application once each, in seq order, without a hole.
//
// Types: pystacker.d.ts beside this file. Guide: sdk/js/README.md and docs/web.md.

export const VERSION = '0.1.0';

/** Connection states, as centrifuge-js names them. */
export const State = Object.freeze({
  Disconnected: 'disconnected',
  Connecting: 'connecting',
  Connected: 'connected',
});

// The gateway's close codes (src/pystacker/messaging/frames.py).
const CLOSE_REPLACED = 4009; // another connection of the same device took over: reconnecting would fight it
const CLOSE_DEVICE_LIMIT = 4011; // the user has too many devices online and this one connected longest ago
const GATEWAY_GONE = new Set([1001, 1006]); // the gateway went away: ask the registry for another one
const CLIENT_DROPPED = 4000; // our own code when we give up on a socket (no pong, offline, reconnect())
const MAX_SYNC_PAGE = 200; // the gateway's limit for one `sync` frame
const MAX_AVOIDED = 8;
const CATCH_UP_PARALLEL = 4; // rooms synced at once after a reconnect
const RECENT_IDS = 4096; // ids of seq-less messages remembered for dedup

/** A refusal from the server (`status` is its HTTP status or error-frame code; 0: not reached). */
export class PyStackerError extends Error {
  constructor(status, msg, retryAfter = null) {
    super(msg);
    this.name = 'PyStackerError';
    this.status = status;
    this.msg = msg;
    this.retryAfter = retryAfter;
  }
}

class GatewayUnreachable extends PyStackerError {
  constructor(gatewayId, msg) {
    super(0, msg);
    this.gatewayId = gatewayId;
  }
}

// -- small parts --------------------------------------------------------------------------------------

/** A random id of 32 hex digits (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function newClientMsgId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The claims of a JWT, read without verifying it (the server verifies it); null if unreadable. */
export function tokenClaims(token) {
  try {
    const body = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(body + '='.repeat((4 - (body.length % 4)) % 4)));
  } catch {
    return null;
  }
}

/** A content object: a string is a text message; an object is sent as it is (it carries `type`). */
export function asContent(content) {
  return typeof content === 'string' ? { type: 'text', text: content } : content;
}

/** Reconnect delays in seconds: the n-th is drawn from [d/2, d], d = min(initial * factor^(n-1), maxDelay).
 *  The jitter spreads a reconnect storm (a gateway restart drops all of its clients at once). */
export class Backoff {
  constructor({ initial = 0.5, maxDelay = 30, factor = 2, random = Math.random } = {}) {
    if (!(initial > 0) || maxDelay < initial || factor < 1) throw new RangeError('need 0 < initial <= maxDelay, factor >= 1');
    Object.assign(this, { initial, maxDelay, factor, random, attempts: 0 });
  }

  next() {
    const ceiling = Math.min(this.initial * this.factor ** this.attempts, this.maxDelay);
    this.attempts += 1;
    return ceiling / 2 + (this.random() * ceiling) / 2;
  }

  reset() {
    this.attempts = 0;
  }
}

/** `on(name, listener)` returns the function that removes it; a listener that throws is logged, not fatal. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(name, listener) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(listener);
    return () => this.off(name, listener);
  }

  once(name, listener) {
    const off = this.on(name, (ctx) => {
      off();
      listener(ctx);
    });
    return off;
  }

  off(name, listener) {
    this._listeners.get(name)?.delete(listener);
  }

  emit(name, ctx) {
    for (const listener of [...(this._listeners.get(name) || [])]) {
      try {
        listener(ctx);
      } catch (err) {
        console.error(`pystacker: a "${name}" listener failed`, err);
      }
    }
  }
}

/** A message id as the wire takes it: a decimal string. Ids are 64-bit snowflakes, beyond a JS number's
 *  2^53: pass the `id` string the SDK gave (or a BigInt); a number is taken only while it is exact. */
function messageIdOf(id) {
  if (typeof id === 'bigint' && id > 0n) return id.toString();
  if (typeof id === 'number' && Number.isSafeInteger(id) && id > 0) return String(id);
  if (typeof id === 'string' && /^[1-9][0-9]{0,19}$/.test(id)) return id;
  throw new TypeError(`not a message id: ${String(id)} (pass the id string, as the SDK gives it)`);
}

const PREVIEW_CHARS = 80; // as the server's previews (messaging/readstate.py)

function previewText(text) {
  return text.length <= PREVIEW_CHARS ? text : `${text.slice(0, PREVIEW_CHARS - 1)}\u2026`;
}

function replyOf(raw) {
  if (!raw || typeof raw !== 'object') return null;
  return { messageId: String(raw.message_id_str ?? raw.message_id ?? ''), senderId: Number(raw.sender_id) || 0,
    preview: raw.recalled ? '' : String(raw.preview ?? ''), recalled: Boolean(raw.recalled) };
}

function msOrNull(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

/** A chat frame as the application sees it. Ids are strings: snowflakes exceed 2^53. A message
 *  edited, recalled (a tombstone: `recalled`, empty content), replying to another (`replyTo`, a short
 *  quote) or reacted to (`reactions`, in history pages) says so. */
export function messageFromFrame(frame) {
  const payload = frame.payload && typeof frame.payload === 'object' ? frame.payload : {};
  const type = String(frame.content_type || 'text');
  const recalled = Boolean(frame.recalled);
  return {
    kind: 'message',
    id: String(frame.id_str ?? frame.id ?? ''),
    roomId: Number(frame.room_id) || 0,
    seq: Number(frame.seq) || 0,
    senderId: Number(frame.sender_id) || 0,
    type,
    content: { type, ...payload },
    text: !recalled && type === 'text' && typeof payload.text === 'string' ? payload.text : null,
    clientMsgId: typeof frame.client_msg_id === 'string' ? frame.client_msg_id : null,
    ts: Number(frame.ts) || 0,
    replyTo: replyOf(frame.reply_to),
    editedAt: msOrNull(frame.edited_at),
    recalled,
    recalledBy: recalled ? Number(frame.recalled_by) || 0 : null,
    recalledAt: recalled ? msOrNull(frame.recalled_at) : null,
    reactions: Array.isArray(frame.reactions)
      ? frame.reactions.filter((r) => r && typeof r === 'object')
        .map((r) => ({ emoji: String(r.emoji), count: Number(r.count) || 0, me: Boolean(r.me) }))
      : [],
  };
}

/** The room events a socket with `events=1` gets: entries of the room's log, with their own seq. */
export const EVENT_TYPES = Object.freeze(['edit', 'recall', 'reaction']);

/** An `edit`, `recall` or `reaction` frame as the application sees it (null for any other frame).
 *  `messageId` is the message it changes; `senderId` is who did it. */
export function eventFromFrame(frame) {
  if (!frame || !EVENT_TYPES.includes(frame.type)) return null;
  const event = {
    kind: frame.type,
    id: String(frame.id_str ?? frame.id ?? ''),
    roomId: Number(frame.room_id) || 0,
    seq: Number(frame.seq) || 0,
    senderId: Number(frame.sender_id) || 0,
    messageId: String(frame.message_id_str ?? frame.message_id ?? ''),
  };
  if (frame.type === 'edit') {
    // No content: the message was recalled since (a recall blanks its edits; its recall event follows).
    if (!frame.content || typeof frame.content !== 'object') return { ...event, content: null, text: null, editedAt: msOrNull(frame.edited_at) };
    const type = String(frame.content.type || 'text');
    return { ...event, content: { ...frame.content, type },
      text: type === 'text' && typeof frame.content.text === 'string' ? frame.content.text : null,
      editedAt: msOrNull(frame.edited_at) };
  }
  if (frame.type === 'recall') {
    return { ...event, by: Number(frame.by ?? frame.sender_id) || 0, recalledAt: msOrNull(frame.recalled_at) };
  }
  return { ...event, userId: Number(frame.user_id ?? frame.sender_id) || 0, emoji: String(frame.emoji ?? ''),
    on: Boolean(frame.on), count: Number(frame.count) || 0 };
}

/** A frame of the room's log as an entry: a message (`chat`), an event, or null for anything else. */
function entryOf(frame) {
  if (!frame || typeof frame !== 'object') return null;
  const type = frame.type ?? 'chat';
  if (type === 'chat') return messageFromFrame(frame);
  return eventFromFrame(frame);
}

/** A list of log frames as entries, in seq order. */
function entriesOf(frames) {
  return (Array.isArray(frames) ? frames : []).map(entryOf).filter(Boolean).sort((a, b) => a.seq - b.seq);
}

/** The message as it is after `event` (a new object; the same one if the event is not about it).
 *  Applying an event twice changes nothing (a reaction carries its emoji's count now), so history and
 *  live events may overlap; events older than a history page must not be applied to it. `myUserId`
 *  decides `me` of a reaction. A reply's quote follows an edit or a recall of the message it quotes. */
export function applyEvent(message, event, myUserId = null) {
  if (!message || !event) return message;
  if (event.kind === 'edit' && !event.content) return message; // a blanked edit: the recall that blanked it follows
  if (event.messageId !== message.id) {
    const quoted = message.replyTo;
    if (!quoted || quoted.messageId !== event.messageId) return message;
    if (event.kind === 'recall') return { ...message, replyTo: { ...quoted, recalled: true, preview: '' } };
    if (event.kind === 'edit' && !quoted.recalled) {
      return { ...message, replyTo: { ...quoted, preview: event.text !== null ? previewText(event.text) : `[${event.content.type}]` } };
    }
    return message;
  }
  switch (event.kind) {
    case 'edit':
      if (message.recalled) return message;
      return { ...message, type: event.content.type, content: event.content, text: event.text, editedAt: event.editedAt };
    case 'recall':
      return { ...message, recalled: true, recalledBy: event.by, recalledAt: event.recalledAt,
        content: { type: message.type }, text: null };
    case 'reaction': {
      const reactions = message.reactions.map((r) => ({ ...r }));
      let entry = reactions.find((r) => r.emoji === event.emoji);
      if (!entry) {
        entry = { emoji: event.emoji, count: 0, me: false };
        reactions.push(entry);
      }
      entry.count = event.count;
      if (myUserId !== null && event.userId === Number(myUserId)) entry.me = event.on;
      return { ...message, reactions: reactions.filter((r) => r.count > 0) };
    }
    default:
      return message;
  }
}

/** What may be handed to the application next: each room's entries (messages, and the edit, recall
 *  and reaction events, which have seqs of their own in the room's log) once, in seq order, no hole.
 *  Pure logic (like the Python SDK's inbox.py). Per room: `next` (the seq due next; unknown until the
 *  room is seen or positioned), `held` (entries past a hole), `highest` (the highest seq seen). */
export class RoomOrder {
  constructor({ maxHeld = 5000 } = {}) {
    this.rooms = new Map();
    this.maxHeld = maxHeld;
    this._held = 0;
    this._recentIds = new Set();
  }

  /** The last seq handed on without a hole (what to sync after); null while unknown. */
  position(roomId) {
    const room = this.rooms.get(roomId);
    return room && room.next !== null ? room.next - 1 : null;
  }

  /** The application has the room up to `seq` (history it loaded): only ever moves forward. */
  setPosition(roomId, seq) {
    const room = this._room(roomId);
    if (room.next !== null && seq + 1 <= room.next) return [];
    room.next = seq + 1;
    room.highest = Math.max(room.highest, seq);
    for (const held of [...room.held.keys()]) {
      if (held < room.next) {
        room.held.delete(held);
        this._held -= 1;
      }
    }
    return this._release(room);
  }

  forget(roomId) {
    const room = this.rooms.get(roomId);
    if (room) this._held -= room.held.size;
    this.rooms.delete(roomId);
  }

  /** Offer one entry (a message or an event); returns the entries now ready, in order (maybe none: a
   *  duplicate or a hole). */
  offer(message) {
    if (!(message.seq > 0)) return this._offerUnordered(message);
    const room = this._room(message.roomId);
    if (room.next === null) room.next = message.seq; // first sight of the room: it starts here
    if (message.seq < room.next || room.held.has(message.seq)) return [];
    room.highest = Math.max(room.highest, message.seq);
    if (message.seq === room.next) {
      room.next += 1;
      return [message, ...this._release(room)];
    }
    if (this._held < this.maxHeld) {
      room.held.set(message.seq, message);
      this._held += 1;
    } // else dropped: the room stays behind and the gap fill fetches it again
    return [];
  }

  /** Rooms with messages to fetch: [roomId, afterSeq] for each room with a hole. */
  gaps() {
    const found = [];
    for (const [roomId, room] of this.rooms) {
      if (room.next !== null && room.next <= room.highest) found.push([roomId, room.next - 1]);
    }
    return found;
  }

  _room(roomId) {
    let room = this.rooms.get(roomId);
    if (!room) {
      room = { next: null, held: new Map(), highest: 0 };
      this.rooms.set(roomId, room);
    }
    return room;
  }

  _release(room) {
    const ready = [];
    while (room.held.has(room.next)) {
      ready.push(room.held.get(room.next));
      room.held.delete(room.next);
      this._held -= 1;
      room.next += 1;
    }
    return ready;
  }

  _offerUnordered(message) {
    // Frames without a seq (from GoStacker components) can only be deduplicated by id.
    if (this._recentIds.has(message.id)) return [];
    this._recentIds.add(message.id);
    if (this._recentIds.size > RECENT_IDS) this._recentIds.delete(this._recentIds.values().next().value);
    return [message];
  }
}

/** A presence frame or answer as the SDK gives it. */
function presenceOf(raw) {
  return { userId: Number(raw.user_id), online: Boolean(raw.online),
    lastSeen: typeof raw.last_seen === 'number' ? raw.last_seen : null };
}

/** This tab's device id. The ids live in localStorage; each tab holds a Web Lock on the one it uses for
 *  as long as it lives, so a reload gets the same id back and two tabs never share one (each is a
 *  device, with its own delivery on the server). Without Web Locks (an insecure context), the id is
 *  kept in sessionStorage: one per tab. */
export async function claimDeviceId({ storage = globalThis.localStorage, tabStorage = globalThis.sessionStorage,
  locks = globalThis.navigator?.locks, key = 'pystacker.devices' } = {}) {
  if (!locks || !storage) {
    const known = tabStorage?.getItem(key);
    if (known) return known;
    const id = newClientMsgId().slice(0, 16);
    tabStorage?.setItem(key, id);
    return id;
  }
  const read = () => {
    try {
      const ids = JSON.parse(storage.getItem(key) || '[]');
      return Array.isArray(ids) ? ids.filter((id) => typeof id === 'string') : [];
    } catch {
      return [];
    }
  };
  for (const id of read()) {
    if (await holdLock(locks, `${key}:${id}`)) return id;
  }
  for (;;) {
    const id = newClientMsgId().slice(0, 16);
    if (await holdLock(locks, `${key}:${id}`)) {
      storage.setItem(key, JSON.stringify([...read().filter((known) => known !== id), id].slice(-16)));
      return id;
    }
  }
}

function holdLock(locks, name) {
  return new Promise((resolve) => {
    locks.request(name, { ifAvailable: true }, (lock) => {
      resolve(lock !== null);
      return lock === null ? undefined : new Promise(() => {}); // held until the page goes away
    });
  });
}

// -- the client ----------------------------------------------------------------------------------------

/**
 * One user's client: HTTP calls to meta, send and registry, and one live WebSocket to a gateway.
 * Events (`client.on(name, listener)`): `state`, `connecting`, `connected`, `disconnected`, `message`,
 * `edit`, `recall`, `reaction`, `sending`, `accepted`, `delivered`, `send-failed`, `read`, `typing`,
 * `presence`, `welcome`, `frame`, `error`.
 */
export class PyStackerClient extends Emitter {
  constructor({ metaUrl, sendUrl, registryUrl, token = null, deviceId = null, requestTimeout = 10000,
    connectTimeout = 10000, pingInterval = 25000, pongTimeout = 10000, stableAfter = 5000, ackDelay = 100,
    backoff = null, WebSocket: WebSocketImpl = globalThis.WebSocket, fetch: fetchImpl = globalThis.fetch?.bind(globalThis),
    watchNetwork = true } = {}) {
    super();
    if (!metaUrl || !sendUrl || !registryUrl) throw new TypeError('metaUrl, sendUrl and registryUrl are required');
    this.metaUrl = metaUrl.replace(/\/+$/, '');
    this.sendUrl = sendUrl.replace(/\/+$/, '');
    this.registryUrl = registryUrl.replace(/\/+$/, '');
    Object.assign(this, { requestTimeout, connectTimeout, pingInterval, pongTimeout, stableAfter, ackDelay });
    this.backoff = backoff || new Backoff();
    this.state = State.Disconnected;
    this.token = null;
    this.userId = null;
    this.username = null;
    this.gatewayId = null;
    this.order = new RoomOrder();
    this._WebSocket = WebSocketImpl;
    this._fetch = fetchImpl;
    this._watchNetwork = watchNetwork && typeof globalThis.addEventListener === 'function';
    this._deviceId = deviceId;
    this._watched = []; // users whose presence this client watches (sent again on every connect)
    this._credentials = null;
    this._relogin = null;
    this._wanted = false;
    this._ws = null;
    this._welcomed = false;
    this._refs = 0;
    this._pending = new Map(); // ref -> {resolve, reject, timer}: requests waiting for their answer
    this._outbox = new Map(); // client_msg_id -> send, edit, recall or react waiting for its answer (in order)
    this._sendRefs = new Map(); // ref -> client_msg_id, to match an answer or an error frame to its request
    this._acked = new Map(); // room -> seq acknowledged on this connection
    this._handed = new Map(); // room -> highest seq handed to the application
    this._ackTimer = null;
    this._filling = new Set();
    this._avoid = [];
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._openedAt = 0;
    this._failedOpens = 0;
    this._onOnline = () => this._networkBack();
    this._onOffline = () => this._drop('the browser went offline');
    if (token) this.useToken(token);
  }

  // -- session ---------------------------------------------------------------------------------------

  /** Use a token kept from an earlier login (the user id and name come from its claims). */
  useToken(token) {
    const claims = tokenClaims(token);
    this.token = token;
    this.userId = claims && Number(claims.user_id) ? Number(claims.user_id) : null;
    this.username = claims && typeof claims.username === 'string' ? claims.username : null;
  }

  /** True when the token's `exp` claim is past (or within `marginMs`). */
  tokenExpired(marginMs = 30000) {
    const claims = this.token ? tokenClaims(this.token) : null;
    return !claims || (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now() + marginMs);
  }

  async register(username, password, nickname = '') {
    const data = await this._call('POST', this.metaUrl, '/register', { body: { username, password, nickname }, auth: false });
    return Number(data?.user_id) || 0;
  }

  /** Log in; the credentials stay in memory only, to log in again when the token expires. */
  async login(username, password) {
    const data = await this._call('POST', this.metaUrl, '/login', { body: { username, password }, auth: false });
    if (!data || typeof data.token !== 'string') throw new PyStackerError(500, 'login answer without a token');
    this.useToken(data.token);
    if (data.user_id) this.userId = Number(data.user_id);
    this.username = username;
    this._credentials = { username, password };
    this.emit('token', { token: this.token, userId: this.userId });
    return { token: this.token, userId: this.userId };
  }

  /** Forget the token and the credentials and close the connection. */
  logout() {
    this.disconnect();
    this.token = null;
    this.userId = null;
    this.username = null;
    this._credentials = null;
    for (const entry of this._outbox.values()) {
      clearTimeout(entry.timer);
      entry.reject(new PyStackerError(0, 'logged out before the answer'));
    }
    this._outbox.clear();
    this.order = new RoomOrder();
    this._handed.clear();
  }

  async _loginAgain() {
    if (!this._credentials) return false;
    // One login at a time, whatever number of calls found the token expired together.
    this._relogin ||= this.login(this._credentials.username, this._credentials.password)
      .finally(() => { this._relogin = null; });
    await this._relogin;
    return true;
  }

  // -- HTTP ------------------------------------------------------------------------------------------

  async _call(method, base, path, { body, query, auth = true, retried = false } = {}) {
    if (auth && !this.token) throw new PyStackerError(401, 'not logged in');
    if (auth && !retried && this._credentials && this.tokenExpired()) await this._loginAgain();
    const url = new URL(base + path);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers = {};
    if (auth) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.requestTimeout);
    let response;
    let text;
    try {
      response = await this._fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: abort.signal });
      text = await response.text();
    } catch (err) {
      const why = abort.signal.aborted ? `no answer within ${this.requestTimeout / 1000} s` : err.message || String(err);
      throw new PyStackerError(0, `${method} ${path}: ${why}`);
    } finally {
      clearTimeout(timer);
    }
    let envelope = null;
    try {
      envelope = text ? JSON.parse(text) : null;
    } catch {
      envelope = null;
    }
    if (response.ok && envelope && typeof envelope === 'object' && (envelope.code ?? 0) === 0) return envelope.data;
    if (response.status === 401 && auth && !retried && (await this._loginAgain())) {
      return this._call(method, base, path, { body, query, auth, retried: true });
    }
    const msg = envelope && typeof envelope.msg === 'string' ? envelope.msg : (text || response.statusText || 'unexpected answer').slice(0, 200);
    const retryAfter = Number(response.headers.get('Retry-After')) || null;
    throw new PyStackerError(response.status, msg, retryAfter);
  }

  profile() {
    return this._call('GET', this.metaUrl, '/api/user/profile');
  }

  /** Create a group (`isGroup`, the default) or a private room with exactly one other member. */
  async createRoom(name, memberIds = [], { isGroup = true } = {}) {
    const data = await this._call('POST', this.metaUrl, '/api/chat/group/create',
      { body: { name, is_group: isGroup, member_ids: memberIds.map(Number) } });
    return Number(data.room_id);
  }

  async addMembers(roomId, memberIds) {
    const data = await this._call('POST', this.metaUrl, '/api/chat/group/add_members',
      { body: { room_id: roomId, member_ids: memberIds.map(Number) } });
    return (data?.added || []).map(Number);
  }

  async join(roomId) {
    await this._call('POST', this.metaUrl, '/api/chat/group/join', { body: { room_id: roomId } });
  }

  async leave(roomId) {
    await this._call('POST', this.metaUrl, '/api/chat/group/leave', { body: { room_id: roomId } });
    this.order.forget(roomId);
  }

  async roomInfo(roomId) {
    const data = await this._call('GET', this.metaUrl, '/api/chat/group/info', { query: { room_id: roomId } });
    return { roomId: Number(data.id), name: String(data.name ?? ''), isGroup: Boolean(data.is_group),
      memberCount: Number(data.member_count) || 0, creatorId: Number(data.creator_id) || 0 };
  }

  async members(roomId) {
    const data = await this._call('GET', this.metaUrl, '/api/chat/group/members', { query: { room_id: roomId } });
    return (data?.members || []).map((m) => ({ userId: Number(m.user_id), username: String(m.username ?? ''),
      nickname: m.nickname || '', role: Number(m.role ?? 2) }));
  }

  async searchRooms(text = '', limit = 20) {
    const data = await this._call('GET', this.metaUrl, '/api/chat/group/search', { query: { q: text, limit } });
    return (data?.rooms || []).map((r) => ({ roomId: Number(r.id), name: String(r.name ?? ''), creatorId: Number(r.creator_id) || 0 }));
  }

  async requestJoin(roomId, message = null) {
    const data = await this._call('POST', this.metaUrl, '/api/chat/group/join/request',
      { body: message ? { room_id: roomId, message } : { room_id: roomId } });
    return Number(data.request_id);
  }

  async joinRequests(roomId) {
    const data = await this._call('GET', this.metaUrl, '/api/chat/group/join/requests', { query: { room_id: roomId } });
    return (data?.requests || []).map((r) => ({ requestId: Number(r.id), roomId: Number(r.room_id),
      userId: Number(r.user_id), message: r.message || '', createdAt: r.created_at }));
  }

  async respondJoin(requestId, approve) {
    await this._call('POST', this.metaUrl, '/api/chat/group/join/respond', { body: { request_id: requestId, approve: Boolean(approve) } });
  }

  /** The caller's rooms. `rooms` holds the server's read state (unread, last message) when it has it
   *  (null for a server without read state); each room's last seq becomes its catch-up position. */
  async joinedRooms() {
    const data = await this._call('GET', this.metaUrl, '/api/joined_rooms');
    const roomIds = (data?.room_ids || []).map(Number);
    const rooms = Array.isArray(data?.rooms) ? data.rooms.map((r) => ({
      roomId: Number(r.room_id), lastSeq: Number(r.last_seq) || 0, readSeq: Number(r.read_seq) || 0,
      unread: Number(r.unread) || 0,
      lastMessage: r.last_message ? { id: String(r.last_message.id_str ?? r.last_message.id), seq: Number(r.last_message.seq) || 0,
        senderId: Number(r.last_message.sender_id) || 0, type: String(r.last_message.content_type || 'text'),
        preview: String(r.last_message.preview ?? ''), ts: Number(r.last_message.ts) || 0 } : null,
    })) : null;
    // Only rooms without a position: moving a known room's position forward would skip the messages
    // a catch-up in progress is about to hand on.
    for (const room of rooms || []) if (this.order.position(room.roomId) === null) this.track(room.roomId, room.lastSeq);
    return { roomIds, rooms };
  }

  /** A page of a room: ascending after `afterSeq`, else the newest before `beforeSeq` (or the newest
   *  of all). Messages are in their current state (edited, recalled, with their reactions and reply
   *  quotes), without those the caller hid. `events: true`: `entries` instead, the room's log as it
   *  was written (messages and edit, recall and reaction events, by seq), for incremental sync.
   *  The newest page also sets the room's catch-up position if it had none. */
  async history(roomId, { beforeSeq = null, afterSeq = null, limit = 50, events = false } = {}) {
    const data = await this._call('GET', this.sendUrl, '/api/chat/history',
      { query: { room_id: roomId, before_seq: beforeSeq, after_seq: afterSeq, limit, events: events ? 1 : null } });
    const page = { roomId: Number(data.room_id ?? roomId), lastSeq: Number(data.last_seq) || 0,
      hasMore: Boolean(data.has_more), messages: (data.messages || []).map(messageFromFrame) };
    if (events) {
      page.entries = entriesOf(data.events);
      page.messages = page.entries.filter((entry) => entry.kind === 'message');
    }
    if (beforeSeq === null && afterSeq === null && this.order.position(roomId) === null) this.track(roomId, page.lastSeq);
    return page;
  }

  /** Every member's read seq of a room: `{roomId, lastSeq, members: Map(userId -> readSeq)}`. */
  async readState(roomId) {
    const data = await this._call('GET', this.sendUrl, '/api/chat/read_state', { query: { room_id: roomId } });
    return { roomId: Number(data.room_id), lastSeq: Number(data.last_seq) || 0,
      members: new Map((data.members || []).map((m) => [Number(m.user_id), Number(m.read_seq) || 0])) };
  }

  /** Move the caller's read mark (it only moves forward): a `read` frame over the socket when connected,
   *  else POST /api/chat/read. Every device of the user, and the other members, get a `read` event. */
  async markRead(roomId, seq) {
    if (this._connected()) {
      this._ws.send(JSON.stringify({ type: 'read', room_id: roomId, seq }));
      return seq;
    }
    const data = await this._call('POST', this.sendUrl, '/api/chat/read', { body: { room_id: roomId, seq } });
    return Number(data?.seq) || seq;
  }

  /** Whether each user (at most 200) is online, and his last_seen (ms, or null):
   *  `Map(userId -> {userId, online, lastSeen})`. */
  async presence(userIds) {
    const data = await this._call('GET', this.sendUrl, '/api/presence', { query: { user_ids: userIds.join(',') } });
    return new Map((data.users || []).map((u) => [Number(u.user_id), presenceOf(u)]));
  }

  /** Watch these users' presence (at most 200; replaces the previous list; [] stops): `presence`
   *  events with their states now and each change (at most one per user per 5 s). Kept across reconnects. */
  watchPresence(userIds) {
    this._watched = [...userIds];
    if (this._connected()) this._ws.send(JSON.stringify({ type: 'presence_subscribe', user_ids: this._watched }));
  }

  /** Tell the room's other members you are typing: a `typing` frame when connected, else nothing (a
   *  late typing signal is worth nothing). The server forwards one per user and room per 3 s. */
  typing(roomId) {
    if (this._connected()) this._ws.send(JSON.stringify({ type: 'typing', room_id: roomId }));
  }

  // -- the live connection ---------------------------------------------------------------------------

  get deviceId() {
    return this._deviceId;
  }

  /** The room's messages up to `lastSeq` are known to the application: catch-up starts after it. */
  track(roomId, lastSeq) {
    this._handOn(this.order.setPosition(roomId, lastSeq));
  }

  /** The last seq handed on in the room (what the next catch-up starts after); null while unknown. */
  position(roomId) {
    return this.order.position(roomId);
  }

  /** Open the live connection and keep it open: it reconnects by itself until `disconnect()`. */
  connect() {
    if (this._wanted) return;
    if (!this.token) throw new PyStackerError(401, 'log in before connecting');
    this._wanted = true;
    if (this._watchNetwork) {
      globalThis.addEventListener('online', this._onOnline);
      globalThis.addEventListener('offline', this._onOffline);
    }
    this.backoff.reset();
    this._setState(State.Connecting, { code: 0, reason: 'connect called' });
    this._attempt();
  }

  /** Close the connection and stop reconnecting. Sends not yet answered stay queued for `connect()`. */
  disconnect(reason = 'disconnect called') {
    this._wanted = false;
    clearTimeout(this._reconnectTimer);
    if (this._watchNetwork) {
      globalThis.removeEventListener('online', this._onOnline);
      globalThis.removeEventListener('offline', this._onOffline);
    }
    const ws = this._ws;
    this._detach();
    if (ws) ws.close(1000, 'client disconnects');
    this._setState(State.Disconnected, { code: 0, reason });
  }

  /** Drop the socket as a network failure would: the client reconnects and catches up. */
  reconnect() {
    this._drop('reconnect called');
  }

  /** Send over the socket; resolves with the server's answer (`send_ok`). Until answered, the frame is
   *  sent again after every reconnect and every `requestTimeout`: the server answers a repeated
   *  client_msg_id with the first message (`duplicate: true`), so it is never posted twice.
   *  `replyTo`: the id (string) of a message of the same room this one answers (a short quote of it
   *  comes with the message). */
  send(roomId, content, { clientMsgId = null, replyTo = null } = {}) {
    const id = clientMsgId || newClientMsgId();
    const known = this._outbox.get(id);
    if (known) return known.promise;
    const frame = { type: 'send', room_id: Number(roomId), content: asContent(content), client_msg_id: id };
    if (replyTo !== null && replyTo !== undefined) frame.reply_to = messageIdOf(replyTo);
    const entry = this._queue('send', id, frame, Number(roomId));
    entry.content = frame.content;
    entry.replyTo = frame.reply_to ?? null;
    this.emit('sending', { clientMsgId: id, roomId: entry.roomId, content: entry.content, replyTo: entry.replyTo });
    this._transmit(entry);
    return entry.promise;
  }

  /** Change the content of your message (its sender only, within the server's `limits.edit_window_s`).
   *  Resolves with `{messageId, roomId, seq, editedAt, duplicate, clientMsgId}` (`edit_ok`); every
   *  member gets an `edit` event. Retried like a send, with the same client_msg_id. */
  edit(messageId, content, { clientMsgId = null } = {}) {
    return this._operate('edit', clientMsgId,
      { type: 'edit', message_id: messageIdOf(messageId), content: asContent(content) });
  }

  /** Recall a message for everyone: your own within `limits.recall_window_s`, any message of a room you
   *  own or administer. Resolves with `{messageId, roomId, seq, duplicate, clientMsgId}` (`recall_ok`);
   *  every member gets a `recall` event and the message becomes a tombstone. Retried like a send. */
  recall(messageId, { clientMsgId = null } = {}) {
    return this._operate('recall', clientMsgId, { type: 'recall', message_id: messageIdOf(messageId) });
  }

  /** Add (`on`, the default) or take back your reaction `emoji` to a message. Resolves with
   *  `{messageId, roomId, emoji, on, count, seq, duplicate, clientMsgId}` (`react_ok`; `seq` null when
   *  nothing changed); every member gets a `reaction` event when it changed. Retried like a send. */
  react(messageId, emoji, on = true, { clientMsgId = null } = {}) {
    if (typeof emoji !== 'string' || !emoji) throw new TypeError('emoji must be a non-empty string');
    return this._operate('react', clientMsgId,
      { type: 'react', message_id: messageIdOf(messageId), emoji, on: Boolean(on) });
  }

  /** Hide a message from your own history, on every device (HTTP; nobody is told, no event). */
  async hide(messageId) {
    const data = await this._call('POST', this.sendUrl, '/api/chat/hide_message',
      { body: { message_id: messageIdOf(messageId) } });
    return { messageId: String(data?.message_id_str ?? data?.message_id ?? messageId), roomId: Number(data?.room_id) || 0 };
  }

  /** Sends not answered yet (optionally of one room), oldest first. */
  pendingSends(roomId = null) {
    return [...this._outbox.values()].filter((e) => e.kind === 'send' && (roomId === null || e.roomId === roomId))
      .map((e) => ({ clientMsgId: e.clientMsgId, roomId: e.roomId, content: e.content, replyTo: e.replyTo }));
  }

  /** Edits, recalls and reactions not answered yet, oldest first. */
  pendingOperations() {
    return [...this._outbox.values()].filter((e) => e.kind !== 'send')
      .map((e) => ({ kind: e.kind, clientMsgId: e.clientMsgId, messageId: e.frame.message_id }));
  }

  _queue(kind, clientMsgId, frame, roomId = null) {
    const entry = { kind, clientMsgId, frame: { ...frame, client_msg_id: clientMsgId }, roomId, timer: null };
    entry.promise = new Promise((resolve, reject) => Object.assign(entry, { resolve, reject }));
    this._outbox.set(clientMsgId, entry);
    return entry;
  }

  /** An edit, recall or react: queued with its client_msg_id like a send (the same id after every
   *  reconnect, so the server applies it once and answers a repeat with `duplicate: true`). */
  _operate(kind, clientMsgId, frame) {
    const id = clientMsgId || newClientMsgId();
    const known = this._outbox.get(id);
    if (known) return known.promise;
    const entry = this._queue(kind, id, frame);
    this._transmit(entry);
    return entry.promise;
  }

  /** Read a room's log after `afterSeq` over the socket (at most 200 entries): `{entries, messages,
   *  events, hasMore}`; `entries` are the messages and the edit, recall and reaction events by seq. */
  async sync(roomId, afterSeq, limit = 50) {
    const answer = await this._request({ type: 'sync', room_id: roomId, after_seq: afterSeq,
      limit: Math.min(Math.max(limit, 1), MAX_SYNC_PAGE) });
    const entries = entriesOf(answer.payload);
    return { entries, messages: entries.filter((e) => e.kind === 'message'),
      events: entries.filter((e) => e.kind !== 'message'), hasMore: Boolean(answer.has_more) };
  }

  /** Round trip of an application-level ping, in milliseconds. */
  async ping() {
    const started = performance.now();
    await this._request({ type: 'ping' });
    return performance.now() - started;
  }

  // -- connecting ------------------------------------------------------------------------------------

  _connected() {
    return this._ws !== null && this._welcomed && this._ws.readyState === 1;
  }

  _setState(state, ctx) {
    const old = this.state;
    if (old === state && state !== State.Connecting) return;
    this.state = state;
    if (old !== state) this.emit('state', { oldState: old, newState: state });
    this.emit(state, ctx);
  }

  async _attempt() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (!this._wanted || this._ws) return;
    try {
      if (!this._deviceId) this._deviceId = await claimDeviceId();
      if (this.tokenExpired() && !(await this._loginAgain())) {
        throw new PyStackerError(401, 'the token expired: log in again');
      }
      if (this._failedOpens >= 3 && this._failedOpens % 3 === 0) await this.profile(); // a refused token shows here
      const ws = await this._open();
      if (!this._wanted) {
        ws.close(1000, 'client disconnects');
        return;
      }
      this._failedOpens = 0;
      this._attach(ws);
    } catch (err) {
      if (!this._wanted) return;
      if (err instanceof PyStackerError && (err.status === 401 || err.status === 403)) {
        this.emit('error', { error: err });
        this.disconnect(err.msg);
        return;
      }
      this._failedOpens += 1;
      if (err instanceof GatewayUnreachable && !this._avoid.includes(err.gatewayId)) {
        // The registry can name another gateway at once: ask again without waiting.
        this._avoid = [...this._avoid, err.gatewayId].slice(-MAX_AVOIDED);
        this._scheduleReconnect(0, err.msg);
        return;
      }
      this._scheduleReconnect(this.backoff.next(), err.msg || String(err));
    }
  }

  _scheduleReconnect(delaySeconds, reason) {
    if (!this._wanted) return;
    this._setState(State.Connecting, { code: 0, reason, delay: delaySeconds });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._attempt(), delaySeconds * 1000);
  }

  async _open() {
    const query = { user_id: this.userId };
    if (this._avoid.length) query.exclude = this._avoid.join(',');
    const gateway = await this._call('GET', this.registryUrl, '/registry/gateway/available', { query, auth: false });
    let host = String(gateway.address || '');
    if (['', '0.0.0.0', '::'].includes(host)) host = new URL(this.registryUrl).hostname; // bound to every interface
    if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
    const scheme = new URL(this.registryUrl).protocol === 'https:' ? 'wss' : 'ws';
    // events=1: PyStacker's frames (read, typing, presence, edit, recall, reaction), not GoStacker's subset.
    const params = new URLSearchParams({ token: this.token, acks: '1', catchup: '0', events: '1', device_id: this._deviceId });
    const gatewayId = String(gateway.gateway_id || `${host}:${gateway.port}`);
    const ws = new this._WebSocket(`${scheme}://${host}:${Number(gateway.port)}/api/ws?${params}`);
    return new Promise((resolve, reject) => {
      const fail = (why) => {
        clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        try { ws.close(); } catch { /* never opened */ }
        reject(new GatewayUnreachable(gatewayId, `gateway ${gatewayId}: ${why}`));
      };
      const timer = setTimeout(() => fail(`no connection within ${this.connectTimeout / 1000} s`), this.connectTimeout);
      ws.onopen = () => {
        clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        this.gatewayId = gatewayId;
        resolve(ws);
      };
      ws.onerror = () => fail('connection failed');
      ws.onclose = (event) => fail(`closed with code ${event.code}`);
    });
  }

  _attach(ws) {
    this._ws = ws;
    this._welcomed = false;
    this._openedAt = Date.now();
    this._acked.clear();
    ws.onmessage = (event) => this._onFrame(ws, event.data);
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
  }

  /** The welcome frame: the server has registered the socket. Catch up, then send what waits. */
  _welcome(frame) {
    this._welcomed = true;
    this._avoid = [];
    if (Number(frame.user_id)) this.userId = Number(frame.user_id);
    this._setState(State.Connected, { userId: this.userId, gatewayId: this.gatewayId, deviceId: this._deviceId });
    this.emit('welcome', { userId: this.userId, gatewayId: frame.gateway_id ?? this.gatewayId,
      unread: Number(frame.unread) || 0 });
    for (const entry of this._outbox.values()) this._transmit(entry);
    if (this._watched.length) this._ws.send(JSON.stringify({ type: 'presence_subscribe', user_ids: this._watched }));
    this._catchUp();
    this._scheduleAcks(0);
    this._schedulePing();
  }

  _detach() {
    const ws = this._ws;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
    this._welcomed = false;
    clearTimeout(this._pingTimer);
    for (const entry of this._outbox.values()) clearTimeout(entry.timer);
    for (const [ref, waiter] of this._pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new PyStackerError(0, 'connection lost before the answer'));
      this._pending.delete(ref);
    }
    this._sendRefs.clear();
    this._filling.clear();
    return ws;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    const lived = Date.now() - this._openedAt;
    this._detach();
    if (!this._wanted) return;
    if (code === CLOSE_REPLACED) {
      // Another connection of this device replaced ours; reconnecting would throw it out in turn.
      this._wanted = false;
      this._setState(State.Disconnected, { code, reason: 'replaced by another connection of this device', replaced: true });
      return;
    }
    if (code === CLOSE_DEVICE_LIMIT) {
      // Reconnecting would close another of the user's devices in turn.
      this._wanted = false;
      this._setState(State.Disconnected, { code, reason: 'too many devices of this user online', deviceLimit: true });
      return;
    }
    if (lived >= this.stableAfter) this.backoff.reset();
    if (GATEWAY_GONE.has(code) && this.gatewayId) this._avoid = [this.gatewayId];
    this._scheduleReconnect(this.backoff.next(), reason || `closed with code ${code}`);
  }

  /** Give up on the socket now (a close handshake over a dead network can take minutes) and reconnect. */
  _drop(reason) {
    const ws = this._ws;
    if (!ws) return;
    this._detach();
    try { ws.close(CLIENT_DROPPED, 'client reconnects'); } catch { /* already closed */ }
    if (this._wanted) this._scheduleReconnect(this.backoff.next(), reason);
  }

  _networkBack() {
    if (this._wanted && !this._ws) {
      this.backoff.reset();
      this._scheduleReconnect(0, 'the browser is online again');
    }
  }

  _schedulePing() {
    clearTimeout(this._pingTimer);
    if (!(this.pingInterval > 0)) return;
    const ws = this._ws;
    this._pingTimer = setTimeout(async () => {
      try {
        await this._request({ type: 'ping' }, this.pongTimeout);
        if (this._ws === ws) this._schedulePing();
      } catch {
        if (this._ws === ws) this._drop('no pong from the gateway');
      }
    }, this.pingInterval);
  }

  // -- frames ----------------------------------------------------------------------------------------

  _onFrame(ws, text) {
    if (ws !== this._ws) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    const payload = frame.payload;
    switch (frame.type) {
      case 'system':
        if (!this._welcomed) this._welcome(frame);
        break;
      case 'chat':
      case 'edit':
      case 'recall':
      case 'reaction':
        this._offer([frame]);
        break;
      case 'batch':
        this._offer(Array.isArray(payload) ? payload : []);
        this._answer(frame.ref, frame);
        break;
      case 'send_ok':
        this._accepted(frame);
        break;
      case 'edit_ok':
      case 'recall_ok':
      case 'react_ok':
        this._answered(frame);
        break;
      case 'error':
        this._refused(frame);
        break;
      case 'pong':
        this._answer(payload, frame);
        break;
      case 'ack':
        this.emit('delivered', { id: String(frame.id_str ?? frame.id), roomId: Number(frame.ack_room_id) || 0,
          seq: Number(frame.seq) || 0, clientMsgId: frame.client_msg_id ?? null });
        break;
      case 'read':
        this.emit('read', { roomId: Number(frame.room_id), userId: Number(frame.user_id ?? frame.sender_id), seq: Number(frame.seq) || 0 });
        break;
      case 'presence':
        this.emit('presence', presenceOf(frame));
        break;
      case 'typing':
        this.emit('typing', { roomId: Number(frame.room_id), userId: Number(frame.user_id ?? frame.sender_id) });
        break;
      default:
        // Frame types this SDK does not know: handed on as they are.
        this.emit('frame', frame);
    }
  }

  _offer(frames) {
    const ready = [];
    for (const frame of frames) {
      if (!frame || typeof frame !== 'object') continue;
      if (frame.type === 'batch' && Array.isArray(frame.payload)) {
        this._offer(frame.payload); // GoStacker could nest a batch in a batch
        continue;
      }
      const entry = entryOf(frame);
      if (entry) ready.push(...this.order.offer(entry));
    }
    this._handOn(ready);
    for (const [roomId] of this.order.gaps()) this._fill(roomId);
  }

  /** Hand entries on: a `message` event for a message, an `edit`, `recall` or `reaction` event for the
   *  others. Events' seqs count like messages' (positions, acks). */
  _handOn(entries) {
    for (const entry of entries) {
      if (entry.seq > (this._handed.get(entry.roomId) || 0)) this._handed.set(entry.roomId, entry.seq);
      this.emit(entry.kind === 'message' ? 'message' : entry.kind, entry);
    }
    if (entries.length) this._scheduleAcks(this.ackDelay);
  }

  _answer(ref, frame) {
    if (typeof ref !== 'string') return;
    const waiter = this._pending.get(ref);
    if (!waiter) return;
    this._pending.delete(ref);
    clearTimeout(waiter.timer);
    if (frame.type === 'error') {
      const body = frame.payload || {};
      waiter.reject(new PyStackerError(Number(body.code) || 0, String(body.msg || 'error'), body.retry_after ?? null));
    } else {
      waiter.resolve(frame);
    }
  }

  _request(frame, timeout = this.requestTimeout) {
    if (!this._connected()) return Promise.reject(new PyStackerError(0, 'not connected'));
    const ref = `r${++this._refs}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new PyStackerError(0, `no answer to ${frame.type} within ${timeout / 1000} s`));
      }, timeout);
      this._pending.set(ref, { resolve, reject, timer });
      this._ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  // -- sending ---------------------------------------------------------------------------------------

  _transmit(entry) {
    clearTimeout(entry.timer);
    if (!this._connected() || !this._outbox.has(entry.clientMsgId)) return; // sent on the next welcome
    const ref = `s${++this._refs}`;
    this._sendRefs.set(ref, entry.clientMsgId);
    this._ws.send(JSON.stringify({ ...entry.frame, ref }));
    entry.timer = setTimeout(() => this._transmit(entry), this.requestTimeout); // no answer: again, same id
  }

  _accepted(frame) {
    const payload = frame.payload || {};
    const clientMsgId = payload.client_msg_id ?? this._sendRefs.get(payload.ref);
    this._sendRefs.delete(payload.ref);
    const entry = this._outbox.get(clientMsgId);
    const result = { id: String(payload.id_str ?? payload.msgID ?? frame.id), roomId: Number(frame.room_id) || 0,
      seq: Number(payload.seq) || 0, clientMsgId: clientMsgId ?? null, duplicate: Boolean(payload.duplicate) };
    if (!entry || entry.kind !== 'send') return; // an answer to an earlier attempt of a send already answered
    clearTimeout(entry.timer);
    this._outbox.delete(clientMsgId);
    this.emit('accepted', result);
    entry.resolve(result);
  }

  /** `edit_ok`, `recall_ok`, `react_ok`: the HTTP answer's data, matched to the request by its ref. */
  _answered(frame) {
    const payload = frame.payload && typeof frame.payload === 'object' ? frame.payload : {};
    const clientMsgId = this._sendRefs.get(payload.ref);
    this._sendRefs.delete(payload.ref);
    const entry = this._outbox.get(clientMsgId);
    if (!entry || `${entry.kind}_ok` !== frame.type) return; // an earlier attempt's answer, already settled
    clearTimeout(entry.timer);
    this._outbox.delete(clientMsgId);
    const result = { messageId: String(payload.message_id_str ?? payload.message_id ?? entry.frame.message_id),
      roomId: Number(payload.room_id) || 0, seq: payload.seq === null || payload.seq === undefined ? null : Number(payload.seq),
      duplicate: Boolean(payload.duplicate), clientMsgId };
    if (entry.kind === 'edit') result.editedAt = msOrNull(payload.edited_at);
    if (entry.kind === 'react') Object.assign(result, { emoji: String(payload.emoji ?? entry.frame.emoji),
      on: Boolean(payload.on ?? entry.frame.on), count: Number(payload.count) || 0 });
    entry.resolve(result);
  }

  _refused(frame) {
    const body = frame.payload && typeof frame.payload === 'object' ? frame.payload : {};
    const clientMsgId = this._sendRefs.get(body.ref);
    if (clientMsgId === undefined) {
      if (this._pending.has(body.ref)) this._answer(body.ref, frame);
      else this.emit('error', { error: new PyStackerError(Number(body.code) || 0, String(body.msg || 'error')) });
      return;
    }
    this._sendRefs.delete(body.ref);
    const entry = this._outbox.get(clientMsgId);
    if (!entry) return;
    clearTimeout(entry.timer);
    const error = new PyStackerError(Number(body.code) || 0, String(body.msg || 'send refused'), body.retry_after ?? null);
    if (error.status === 429) {
      entry.timer = setTimeout(() => this._transmit(entry), Math.max(Number(error.retryAfter) || 1, 0.1) * 1000);
      return;
    }
    this._outbox.delete(clientMsgId);
    if (entry.kind === 'send') this.emit('send-failed', { clientMsgId, roomId: entry.roomId, error });
    entry.reject(error);
  }

  // -- catching up and filling holes -----------------------------------------------------------------

  /** After each (re)connect: every room with a position is synced from it (catchup=0: the server
   *  sends nothing by itself), a few rooms at a time. */
  async _catchUp() {
    const ws = this._ws;
    const rooms = [...this.order.rooms.keys()].filter((roomId) => this.order.position(roomId) !== null);
    const next = async () => {
      while (rooms.length && this._ws === ws) await this._fill(rooms.shift());
    };
    await Promise.all(Array.from({ length: CATCH_UP_PARALLEL }, next));
  }

  /** Sync the room from its position until it has no hole and the server has no more. */
  async _fill(roomId) {
    if (this._filling.has(roomId) || !this._connected()) return;
    this._filling.add(roomId);
    const ws = this._ws;
    try {
      for (;;) {
        const after = this.order.position(roomId);
        if (after === null || this._ws !== ws) return;
        let page;
        try {
          page = await this.sync(roomId, after, MAX_SYNC_PAGE);
        } catch (err) {
          if (err.status === 403 || err.status === 404) this.order.forget(roomId); // no longer a member
          return; // disconnected or no answer: the next connection catches up
        }
        this._handOn(page.entries.flatMap((entry) => this.order.offer(entry)));
        const advanced = (this.order.position(roomId) ?? after) > after;
        const gap = this.order.gaps().some(([id]) => id === roomId);
        if (!advanced || (!page.hasMore && !gap)) return;
      }
    } finally {
      if (this._ws === ws) this._filling.delete(roomId);
    }
  }

  // -- acknowledging ---------------------------------------------------------------------------------

  _scheduleAcks(delay) {
    if (this._ackTimer !== null) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      if (!this._connected()) return;
      // acks=1: the user's cursor on the server moves by these only (what this client has handed on).
      for (const [roomId, seq] of this._handed) {
        if (seq > (this._acked.get(roomId) || 0)) {
          this._ws.send(JSON.stringify({ type: 'ack', room_id: roomId, seq }));
          this._acked.set(roomId, seq);
        }
      }
    }, delay);
  }
}
