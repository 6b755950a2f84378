// PyStacker chat: the web app served by meta at `/`, built on the SDK at /sdk/pystacker.js.
// Plain modules and the DOM, no framework and no build step (docs/web.md says why). The SDK owns the
// connection (reconnect, catch-up by seq, send retries); this file keeps what the screen shows: the
// rooms with their unread counts and last message, and the open room's messages with their states,
// replies, edits, recalls and reactions (the SDK's edit, recall and reaction events, applied in seq
// order with the messages).

import { applyEvent, newClientMsgId, PyStackerClient, PyStackerError, State } from '/sdk/pystacker.js';
import { dayKey, dayLabel, ownState, parseUserIds, previewOf, quoteText, REACTION_EMOJI, RECALLED_TEXT, STATE_LABELS,
  timeLabel } from './format.js';

const SESSION_KEY = 'pystacker.session';
const PAGE_SIZE = 50;
const TYPING_EVERY_MS = 2000; // a typing signal at most this often while the user types
const TYPING_SHOWN_MS = 5000; // "… is typing" stays this long after the last signal
const ROLE_ADMIN = 1; // owner 0 and admin 1 may add members, answer join requests and recall any message
const EVENTS_KEPT = 500; // a room's latest events, applied again to a history page read before them

const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function serviceUrls() {
  const settings = JSON.parse($('#pystacker-settings').textContent || '{}');
  const onThisHost = (port) => `${location.protocol}//${location.hostname}:${port}`;
  return {
    metaUrl: location.origin,
    sendUrl: settings.send_url || onThisHost(settings.send_port),
    registryUrl: settings.registry_url || onThisHost(settings.registry_port),
  };
}

function errorText(err) {
  if (err instanceof PyStackerError) return err.status === 0 ? `The server did not answer (${err.msg}).` : err.msg;
  return err?.message || String(err);
}

/** A room as the screen knows it. `messages`: seq -> message, filled once the room is opened;
 *  `events`: its latest edit, recall and reaction events (a history page is read as of its `lastSeq`:
 *  the later ones are applied to it again). */
function newRoom(roomId) {
  return { roomId, name: `Room ${roomId}`, isGroup: true, unread: 0, last: null, lastSeq: 0, myRole: 2,
    members: new Map(), loaded: false, messages: new Map(), pending: new Map(), hasMore: false,
    oldestSeq: null, loadingOlder: false, readMarks: new Map(), events: [] };
}

class ChatApp {
  constructor() {
    this.client = new PyStackerClient(serviceUrls());
    this.rooms = new Map();
    this.current = null;
    this.online = new Map(); // userId -> online, from `presence` events of the watched members
    this.composing = null; // {mode: 'reply' | 'edit', roomId, message}: what the composer's next Enter does
    this.wire();
  }

  // -- signing in --------------------------------------------------------------------------------

  async start() {
    const saved = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
    if (saved?.token) {
      this.client.useToken(saved.token);
      if (!this.client.tokenExpired()) return this.enter();
      localStorage.removeItem(SESSION_KEY);
    }
    this.show('signin');
  }

  async signIn(action, username, password, nickname) {
    if (action === 'signup') await this.client.register(username, password, nickname);
    const { token } = await this.client.login(username, password);
    localStorage.setItem(SESSION_KEY, JSON.stringify({ token }));
    await this.enter();
  }

  signOut() {
    localStorage.removeItem(SESSION_KEY);
    this.client.logout();
    location.reload();
  }

  async enter() {
    try {
      const profile = await this.client.profile();
      this.myName = profile?.username || this.client.username || '';
    } catch (err) {
      if (err instanceof PyStackerError && err.status === 401) {
        localStorage.removeItem(SESSION_KEY);
        this.show('signin');
        return;
      }
      throw err;
    }
    $('#me').textContent = `Signed in as ${this.myName} (user id ${this.client.userId})`;
    this.show('rooms');
    await this.loadRooms();
    this.client.connect();
  }

  show(view) {
    document.body.dataset.view = view;
    $('#signin').hidden = view !== 'signin';
    $('#chat').hidden = view === 'signin';
    if (view === 'signin') $('#username').focus();
  }

  // -- rooms --------------------------------------------------------------------------------------

  async loadRooms() {
    const { roomIds, rooms } = await this.client.joinedRooms();
    const states = new Map((rooms || []).map((state) => [state.roomId, state]));
    await Promise.all(roomIds.filter((id) => !this.rooms.has(id)).map((id) => this.addRoom(id, states.get(id))));
    this.renderRooms();
  }

  /** Learn a room: its name and members; `state` is its read state from joined_rooms. */
  async addRoom(roomId, state = null) {
    if (this.rooms.has(roomId)) return this.rooms.get(roomId);
    const room = newRoom(roomId);
    this.rooms.set(roomId, room);
    if (state) Object.assign(room, { unread: state.unread, last: state.lastMessage, lastSeq: state.lastSeq });
    try {
      const [info] = await Promise.all([this.client.roomInfo(roomId), this.loadMembers(room)]);
      room.isGroup = info.isGroup;
      room.name = info.name || room.name;
      if (!room.isGroup) {
        const other = [...room.members.entries()].find(([id]) => id !== this.client.userId);
        if (other) room.name = other[1].username;
      }
    } catch (err) {
      console.warn(`room ${roomId}:`, err);
    }
    return room;
  }

  async loadMembers(room) {
    const members = await this.client.members(room.roomId);
    room.members = new Map(members.map((m) => [m.userId, m]));
    room.myRole = room.members.get(this.client.userId)?.role ?? 2;
  }

  senderName(room, userId) {
    const member = room.members.get(userId);
    return member ? member.nickname || member.username : `user ${userId}`;
  }

  renderRooms() {
    const sorted = [...this.rooms.values()].sort((a, b) => (b.last?.ts || 0) - (a.last?.ts || 0) || b.roomId - a.roomId);
    const items = sorted.map((room) => {
      const badge = element('span', { class: 'badge', 'aria-label': room.unread ? `${room.unread} unread` : null },
        room.unread ? String(room.unread) : '');
      const last = room.last ? `${room.last.senderId === this.client.userId ? 'You' : this.senderName(room, room.last.senderId)}: ${previewOf(room.last)}` : previewOf(null);
      const button = element('button', { type: 'button', class: 'room', 'aria-current': room === this.current ? 'true' : null,
        dataset: { roomId: room.roomId } },
      element('span', { class: 'room-name' }, room.name), element('span', { class: 'room-last' }, last), badge);
      button.addEventListener('click', () => this.open(room.roomId));
      return element('li', {}, button);
    });
    $('#rooms').replaceChildren(...items);
    $('#no-rooms').hidden = items.length > 0;
    const unread = sorted.reduce((sum, room) => sum + room.unread, 0);
    document.title = unread ? `(${unread}) PyStacker chat` : 'PyStacker chat';
  }

  // -- the open room ------------------------------------------------------------------------------

  async open(roomId) {
    const room = this.rooms.get(roomId) || (await this.addRoom(roomId));
    if (this.current !== room) this.cancelCompose();
    this.current = room;
    document.body.dataset.view = 'room';
    $('#conversation').hidden = false;
    $('#conversation').dataset.roomId = roomId;
    $('#room-title').textContent = room.name;
    this.renderDetails();
    if (!room.loaded) {
      $('#messages').replaceChildren(element('li', { class: 'loading' }, 'Loading…'));
      const [page, marks] = await Promise.all([this.client.history(roomId, { limit: PAGE_SIZE }),
        this.client.readState(roomId).catch(() => null)]);
      if (this.current !== room) return;
      this.absorbPage(room, page);
      room.hasMore = page.hasMore;
      room.oldestSeq = page.messages[0]?.seq ?? null;
      room.lastSeq = Math.max(room.lastSeq, page.lastSeq);
      if (marks) room.readMarks = marks.members;
      room.loaded = true;
    }
    this.renderMessages({ toBottom: true });
    this.renderTyping();
    this.markRead(room);
    this.renderRooms();
    $('#composer-text').focus();
  }

  // -- typing -------------------------------------------------------------------------------------

  /** The user typed in the composer: tell the room, at most every TYPING_EVERY_MS (the server
   *  forwards one per 3 s anyway; this only saves frames). */
  typed() {
    const now = Date.now();
    if (!this.current || now - (this.lastTypingSent || 0) < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    this.client.typing(this.current.roomId);
  }

  /** Another member is typing: shown under the open room's messages until TYPING_SHOWN_MS after his
   *  last signal (or his message arrives). */
  onTyping({ roomId, userId }) {
    const room = this.rooms.get(roomId);
    if (!room || userId === this.client.userId) return;
    room.typing = room.typing || new Map();
    room.typing.set(userId, Date.now() + TYPING_SHOWN_MS);
    this.renderTyping();
    setTimeout(() => this.renderTyping(), TYPING_SHOWN_MS + 50);
  }

  renderTyping() {
    const room = this.current;
    const now = Date.now();
    const names = [];
    for (const [userId, until] of room?.typing || []) {
      if (until > now) names.push(this.senderName(room, userId));
      else room.typing.delete(userId);
    }
    $('#typing').textContent = names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
  }

  /** Everything the open room shows, rebuilt: on opening it and when older messages come in. */
  renderMessages({ toBottom = false } = {}) {
    const room = this.current;
    const list = $('#messages');
    const fromBottom = list.scrollHeight - list.scrollTop;
    const nodes = [];
    if (room.hasMore) nodes.push(element('li', { class: 'loading' }, 'Scroll up for older messages'));
    let day = null;
    const ordered = [...room.messages.values()].sort((a, b) => a.seq - b.seq);
    for (const message of [...ordered, ...room.pending.values()]) {
      const ts = message.ts || Date.now();
      if (dayKey(ts) !== day) {
        day = dayKey(ts);
        nodes.push(element('li', { class: 'day', role: 'separator' }, dayLabel(ts)));
      }
      nodes.push(this.messageNode(room, message));
    }
    list.replaceChildren(...nodes);
    list.dataset.lastDay = day || '';
    // Keep what the reader looked at in place when older messages are put above it.
    list.scrollTop = toBottom ? list.scrollHeight : list.scrollHeight - fromBottom;
  }

  messageNode(room, message) {
    const mine = message.senderId === this.client.userId;
    const state = mine ? ownState(message, this.othersRead(room)) : null;
    const ts = message.ts || Date.now();
    const recalled = Boolean(message.recalled);
    let text = previewOf(message);
    if (recalled && message.recalledBy && message.recalledBy !== message.senderId) {
      text = `${RECALLED_TEXT} by ${message.recalledBy === this.client.userId ? 'you' : this.senderName(room, message.recalledBy)}`;
    }
    const classes = ['msg', mine ? 'mine' : null, recalled ? 'recalled' : null].filter(Boolean).join(' ');
    return element('li', { class: classes, dataset: { seq: message.seq || '', id: message.id || '',
      clientMsgId: message.clientMsgId || '', state: state || 'received' } },
    element('span', { class: 'sender' }, mine ? 'You' : this.senderName(room, message.senderId)),
    message.replyTo && !recalled ? this.quoteNode(room, message.replyTo) : null,
    element('span', { class: 'text' }, text),
    recalled ? null : this.reactionsNode(message),
    element('div', { class: 'meta' },
      message.seq && message.id ? this.actionsNode(room, message) : null,
      message.editedAt && !recalled ? element('span', { class: 'edited' }, 'edited') : null,
      element('time', { datetime: new Date(ts).toISOString() }, timeLabel(ts)),
      state ? element('span', { class: 'state' }, STATE_LABELS[state]) : null));
  }

  /** The quote of the message a reply answers; a click shows the original when it is loaded. */
  quoteNode(room, quote) {
    const who = quote.senderId === this.client.userId ? 'You' : this.senderName(room, quote.senderId);
    return element('blockquote', { class: quote.recalled ? 'quote recalled' : 'quote', dataset: { replyTo: quote.messageId },
      title: 'Show the message it answers' },
    element('span', { class: 'quote-sender' }, who), element('span', { class: 'quote-preview' }, quoteText(quote)));
  }

  /** The message's reactions: one toggle button per emoji, pressed for the user's own. */
  reactionsNode(message) {
    if (!message.reactions?.length) return null;
    return element('ul', { class: 'reactions', 'aria-label': 'Reactions' }, ...message.reactions.map((r) =>
      element('li', {}, element('button', { type: 'button', class: r.me ? 'reaction me' : 'reaction',
        'aria-pressed': r.me ? 'true' : 'false', dataset: { action: 'react', emoji: r.emoji },
        'aria-label': `${r.emoji} ${r.count}${r.me ? ', yours: take it back' : ''}` },
      element('span', { class: 'emoji' }, r.emoji), element('span', { class: 'count' }, String(r.count))))));
  }

  /** Reply, react, edit (your text messages), recall (yours; any as the room's owner or admin), hide. */
  actionsNode(room, message) {
    const mine = message.senderId === this.client.userId;
    const button = (action, label, extra = {}) => element('button', { type: 'button', class: 'secondary', dataset: { action }, ...extra }, label);
    if (message.recalled) return element('div', { class: 'actions', role: 'group', 'aria-label': 'Message actions' }, button('hide', 'Hide'));
    const picker = element('div', { class: 'picker', role: 'group', 'aria-label': 'Pick a reaction', hidden: true },
      ...REACTION_EMOJI.map((emoji) => button('react', emoji, { 'aria-label': `React with ${emoji}`, dataset: { action: 'react', emoji } })));
    return element('div', { class: 'actions', role: 'group', 'aria-label': 'Message actions' },
      button('reply', 'Reply'),
      button('pick', 'React', { 'aria-expanded': 'false' }),
      mine && message.text !== null ? button('edit', 'Edit') : null,
      mine || room.myRole <= ROLE_ADMIN ? button('recall', 'Recall') : null,
      button('hide', 'Hide'),
      picker);
  }

  /** Add one message at the bottom of the open room (live messages come in seq order). */
  appendNode(room, message) {
    const list = $('#messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const ts = message.ts || Date.now();
    const node = this.messageNode(room, message);
    const firstPending = message.seq ? list.querySelector('.msg[data-state="sending"], .msg[data-state="failed"]') : null;
    if (dayKey(ts) !== list.dataset.lastDay && !firstPending) {
      list.dataset.lastDay = dayKey(ts);
      list.append(element('li', { class: 'day', role: 'separator' }, dayLabel(ts)));
    }
    if (firstPending) list.insertBefore(node, firstPending);
    else list.append(node);
    if (atBottom || message.senderId === this.client.userId) list.scrollTop = list.scrollHeight;
  }

  /** Scroll to a loaded message and highlight it for a moment (a reply's quote was clicked). */
  showMessage(messageId) {
    const node = $('#messages').querySelector(`.msg[data-id="${CSS.escape(messageId)}"]`);
    if (!node) return;
    node.scrollIntoView({ block: 'center' });
    node.classList.add('highlight');
    setTimeout(() => node.classList.remove('highlight'), 1500);
  }

  updateNode(room, message) {
    const selector = message.seq ? `.msg[data-seq="${message.seq}"]` : `.msg[data-client-msg-id="${CSS.escape(message.clientMsgId)}"]`;
    $('#messages').querySelector(selector)?.replaceWith(this.messageNode(room, message));
  }

  async refreshReadMarks() {
    const room = this.current;
    if (!room || !room.loaded) return;
    const marks = await this.client.readState(room.roomId);
    for (const [userId, seq] of marks.members) this.onRead({ roomId: room.roomId, userId, seq });
  }

  othersRead(room) {
    let highest = 0;
    for (const [userId, seq] of room.readMarks) if (userId !== this.client.userId) highest = Math.max(highest, seq);
    return highest;
  }

  async loadOlder() {
    const room = this.current;
    if (!room || !room.loaded || !room.hasMore || room.loadingOlder || room.oldestSeq === null) return;
    room.loadingOlder = true;
    try {
      const page = await this.client.history(room.roomId, { beforeSeq: room.oldestSeq, limit: PAGE_SIZE });
      this.absorbPage(room, page);
      room.hasMore = page.hasMore;
      room.oldestSeq = page.messages[0]?.seq ?? room.oldestSeq;
      if (this.current === room) this.renderMessages();
    } finally {
      room.loadingOlder = false;
    }
  }

  /** A history page's messages, in their state as of the page's `lastSeq`, with the events that came
   *  after it applied (the page and the live events can overlap either way). A page's message replaces
   *  a live copy of it: it is the newer state. */
  absorbPage(room, page) {
    const later = room.events.filter((event) => event.seq > page.lastSeq);
    for (const message of page.messages) {
      let current = message;
      for (const event of later) current = applyEvent(current, event, this.client.userId);
      room.messages.set(message.seq, { ...current, state: room.messages.get(message.seq)?.state ?? 'accepted' });
    }
  }

  markRead(room) {
    if (room !== this.current || document.visibilityState === 'hidden') return;
    const seq = Math.max(room.lastSeq, ...room.messages.keys());
    if (seq > 0 && (room.unread > 0 || (room.readMarks.get(this.client.userId) || 0) < seq)) {
      room.readMarks.set(this.client.userId, seq);
      this.client.markRead(room.roomId, seq).catch((err) => console.warn('read mark:', err));
    }
    room.unread = 0;
  }

  // -- members and join requests ------------------------------------------------------------------

  async renderDetails() {
    const room = this.current;
    const canManage = room.myRole <= ROLE_ADMIN;
    $('#add-form').hidden = !canManage || !room.isGroup;
    // The open room's members are watched: their online dots follow `presence` events.
    this.client.watchPresence([...room.members.keys()].filter((id) => id !== this.client.userId).slice(0, 200));
    $('#members').replaceChildren(...[...room.members.values()].map((m) => {
      const online = m.userId === this.client.userId || this.online.get(m.userId) === true;
      return element('li', { 'data-user-id': String(m.userId) },
        element('span', { class: online ? 'dot online' : 'dot', role: 'img', 'aria-label': online ? 'online' : 'offline' }),
        `${m.nickname || m.username} (id ${m.userId})${m.role === 0 ? ', owner' : m.role === 1 ? ', admin' : ''}`);
    }));
    $('#requests-box').hidden = true;
    if (!canManage || !room.isGroup) return;
    const requests = await this.client.joinRequests(room.roomId).catch(() => []);
    if (this.current !== room) return;
    $('#requests-box').hidden = requests.length === 0;
    $('#requests').replaceChildren(...requests.map((request) => {
      const answer = (approve) => async () => {
        await this.client.respondJoin(request.requestId, approve);
        if (approve) await this.loadMembers(room);
        this.renderDetails();
      };
      const approve = element('button', { type: 'button' }, 'Approve');
      const reject = element('button', { type: 'button', class: 'secondary' }, 'Decline');
      approve.addEventListener('click', answer(true));
      reject.addEventListener('click', answer(false));
      return element('li', { dataset: { requestId: request.requestId } },
        `User ${request.userId}${request.message ? `: “${request.message}”` : ''}`, approve, reject);
    }));
  }

  // -- what the connection reports ----------------------------------------------------------------

  async onMessage(message) {
    const room = this.rooms.get(message.roomId) || (await this.addRoom(message.roomId));
    if (!room.members.has(message.senderId)) await this.loadMembers(room).catch(() => {});
    if (room.messages.has(message.seq)) return; // shown already (history and the live push can overlap)
    const mine = message.senderId === this.client.userId;
    if (room.typing?.delete(message.senderId) && room === this.current) this.renderTyping(); // he sent it
    const pending = message.clientMsgId ? room.pending.get(message.clientMsgId) : null;
    const shown = { ...message, state: pending && pending.state === 'delivered' ? 'delivered' : 'accepted' };
    // Kept while the room's first page loads too: the page may have been read before this message.
    if (room.loaded || room === this.current) room.messages.set(message.seq, shown);
    room.last = message;
    room.lastSeq = Math.max(room.lastSeq, message.seq);
    if (pending) room.pending.delete(message.clientMsgId);
    if (mine) room.readMarks.set(message.senderId, message.seq); // sending moves the sender's own mark
    if (room === this.current) {
      if (pending) $('#messages').querySelector(`.msg[data-client-msg-id="${CSS.escape(message.clientMsgId)}"]`)?.remove();
      this.appendNode(room, shown);
      this.markRead(room);
    } else if (!mine) {
      room.unread += 1;
    }
    this.renderRooms();
  }

  /** An edit, recall or reaction (in seq order with the messages): applied to the messages shown and
   *  kept for the pages read before it; the room list's last message follows it too. */
  async onEvent(event) {
    const room = this.rooms.get(event.roomId);
    if (!room) return; // a room the screen does not know yet: its history has the current state
    room.events.push(event);
    if (room.events.length > EVENTS_KEPT) room.events.splice(0, room.events.length - EVENTS_KEPT);
    room.lastSeq = Math.max(room.lastSeq, event.seq);
    const me = this.client.userId;
    for (const [seq, message] of room.messages) {
      const changed = applyEvent(message, event, me);
      if (changed === message) continue;
      room.messages.set(seq, changed);
      if (room === this.current) this.updateNode(room, changed);
    }
    for (const [clientMsgId, message] of room.pending) {
      const changed = applyEvent({ reactions: [], ...message }, event, me);
      if (changed.replyTo !== message.replyTo) {
        room.pending.set(clientMsgId, changed);
        if (room === this.current) this.updateNode(room, changed);
      }
    }
    if (room.last && room.last.id === event.messageId && event.kind !== 'reaction') {
      room.last = event.kind === 'recall' ? { ...room.last, recalled: true, text: null }
        : { ...room.last, text: event.text, preview: event.text ?? room.last.preview };
      this.renderRooms();
    }
    if (event.kind === 'recall' && this.composing?.message.id === event.messageId) this.cancelCompose();
    if (room === this.current) this.markRead(room);
  }

  onRead({ roomId, userId, seq }) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    const before = this.othersRead(room);
    room.readMarks.set(userId, Math.max(room.readMarks.get(userId) || 0, seq));
    if (userId === this.client.userId) {
      // Another tab or device of ours read the room.
      if (seq >= room.lastSeq) room.unread = 0;
      this.renderRooms();
    } else if (room === this.current && this.othersRead(room) > before) {
      for (const message of room.messages.values()) {
        if (message.senderId === this.client.userId && message.seq > before && message.seq <= seq) this.updateNode(room, message);
      }
    }
  }

  onSendState(clientMsgId, roomId, change) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    const message = room.pending.get(clientMsgId) || [...room.messages.values()].find((m) => m.clientMsgId === clientMsgId);
    if (!message) return;
    Object.assign(message, change);
    if (room === this.current) this.updateNode(room, message);
  }

  onConnection(state, ctx) {
    document.body.dataset.connection = state;
    const banner = $('#banner');
    if (state === State.Connected) {
      banner.hidden = true;
      this.loadRooms().catch((err) => console.warn('rooms:', err)); // rooms we were added to meanwhile
      this.refreshReadMarks().catch((err) => console.warn('read state:', err)); // receipts missed while away
      return;
    }
    if (state === State.Connecting) {
      banner.replaceChildren('Reconnecting… ', element('small', {}, ctx?.reason ? `(${ctx.reason})` : ''));
    } else if (ctx?.replaced) {
      const here = element('button', { type: 'button' }, 'Use here');
      here.addEventListener('click', () => this.client.connect());
      banner.replaceChildren('The chat is open in another tab or window. ', here);
    } else {
      banner.replaceChildren(`Disconnected${ctx?.reason ? `: ${ctx.reason}` : ''}`);
    }
    banner.hidden = false;
  }

  // -- replying, editing, recalling, reacting, hiding ---------------------------------------------

  /** A button of a message was pressed (`data-action`): reply, pick (the emoji menu), react, edit,
   *  recall or hide. Edits, recalls and reactions show when their event comes back, like anyone else's. */
  act(action, message, button) {
    const room = this.current;
    $('#action-error').textContent = '';
    const failed = (err) => {
      $('#action-error').textContent = errorText(err);
    };
    switch (action) {
      case 'reply':
      case 'edit':
        this.compose(action, message);
        break;
      case 'pick': {
        const picker = button.parentElement.querySelector('.picker');
        picker.hidden = !picker.hidden;
        button.setAttribute('aria-expanded', String(!picker.hidden));
        if (!picker.hidden) picker.querySelector('button')?.focus();
        break;
      }
      case 'react': {
        const emoji = button.dataset.emoji;
        const mine = message.reactions?.find((r) => r.emoji === emoji)?.me ?? false;
        const picker = button.closest('.picker');
        if (picker) picker.hidden = true;
        this.client.react(message.id, emoji, !mine).catch(failed);
        break;
      }
      case 'recall':
        this.client.recall(message.id).catch(failed);
        break;
      case 'hide':
        this.client.hide(message.id).then(() => {
          room.messages.delete(message.seq);
          if (this.composing?.message.id === message.id) this.cancelCompose();
          if (room === this.current) $('#messages').querySelector(`.msg[data-seq="${message.seq}"]`)?.remove();
        }, failed);
        break;
      default:
    }
  }

  /** The composer's next Enter replies to `message` or replaces its text; a bar above it says which. */
  compose(mode, message) {
    const room = this.current;
    this.composing = { mode, roomId: room.roomId, message };
    const who = message.senderId === this.client.userId ? 'yourself' : this.senderName(room, message.senderId);
    const cancel = element('button', { type: 'button', class: 'secondary', 'aria-label': mode === 'edit' ? 'Cancel the edit' : 'Cancel the reply' }, 'Cancel');
    cancel.addEventListener('click', () => this.cancelCompose());
    $('#composer-context').replaceChildren(
      element('span', { class: 'context-label' }, mode === 'edit' ? 'Editing your message' : `Replying to ${who}:`),
      mode === 'reply' ? element('span', { class: 'context-preview' }, previewOf(message)) : null, cancel);
    $('#composer-context').hidden = false;
    $('#composer-context').dataset.mode = mode;
    const box = $('#composer-text');
    if (mode === 'edit') box.value = message.text ?? '';
    box.focus();
  }

  cancelCompose() {
    if (!this.composing) return;
    const wasEdit = this.composing.mode === 'edit';
    this.composing = null;
    $('#composer-context').hidden = true;
    $('#composer-context').replaceChildren();
    delete $('#composer-context').dataset.mode;
    if (wasEdit) $('#composer-text').value = '';
  }

  // -- sending ------------------------------------------------------------------------------------

  send(text) {
    const room = this.current;
    if (!room || !text.trim()) return;
    const composing = this.composing?.roomId === room.roomId ? this.composing : null;
    this.cancelCompose();
    if (composing?.mode === 'edit') {
      $('#action-error').textContent = '';
      if (text !== composing.message.text) {
        this.client.edit(composing.message.id, text).catch((err) => { $('#action-error').textContent = errorText(err); });
      }
      return;
    }
    const quoted = composing?.mode === 'reply' ? composing.message : null;
    const clientMsgId = newClientMsgId();
    const message = { id: '', roomId: room.roomId, seq: 0, senderId: this.client.userId, type: 'text', text,
      clientMsgId, ts: Date.now(), state: 'sending', reactions: [],
      replyTo: quoted ? { messageId: quoted.id, senderId: quoted.senderId, preview: previewOf(quoted), recalled: false } : null };
    room.pending.set(clientMsgId, message);
    this.appendNode(room, message);
    // Until the server answers, the SDK sends the frame again after each reconnect, with the same id.
    this.client.send(room.roomId, text, { clientMsgId, replyTo: quoted?.id ?? null }).then((result) => {
      if (room.pending.has(clientMsgId)) this.onSendState(clientMsgId, room.roomId, { state: 'accepted', seq: result.seq });
    }, () => this.onSendState(clientMsgId, room.roomId, { state: 'failed' }));
  }

  // -- wiring -------------------------------------------------------------------------------------

  wire() {
    const client = this.client;
    // One message at a time: onMessage may wait for a room's members, and the screen keeps seq order.
    let handled = Promise.resolve();
    client.on('message', (message) => {
      handled = handled.then(() => this.onMessage(message)).catch((err) => console.error(err));
    });
    // Edits, recalls and reactions in the same queue: an event follows the message it changes.
    for (const name of ['edit', 'recall', 'reaction']) {
      client.on(name, (event) => {
        handled = handled.then(() => this.onEvent(event)).catch((err) => console.error(err));
      });
    }
    client.on('read', (event) => this.onRead(event));
    client.on('typing', (event) => this.onTyping(event));
    client.on('presence', ({ userId, online }) => {
      this.online.set(userId, online);
      const dot = document.querySelector(`#members li[data-user-id="${userId}"] .dot`);
      if (dot) {
        dot.className = online ? 'dot online' : 'dot';
        dot.setAttribute('aria-label', online ? 'online' : 'offline');
      }
    });
    client.on('delivered', ({ clientMsgId, roomId }) => clientMsgId && this.onSendState(clientMsgId, roomId, { state: 'delivered' }));
    client.on('state', ({ newState }) => document.body.setAttribute('data-connection', newState));
    for (const state of Object.values(State)) client.on(state, (ctx) => this.onConnection(state, ctx));
    client.on('error', ({ error }) => {
      if (error.status === 401) this.signOut();
    });

    $('#signin-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const form = event.target;
      const action = event.submitter?.value || 'signin';
      $('#signin-error').textContent = '';
      if (!form.username.value.trim() || !form.password.value) {
        $('#signin-error').textContent = 'Enter a username and a password.';
        return;
      }
      for (const button of form.querySelectorAll('button')) button.disabled = true;
      try {
        await this.signIn(action, form.username.value.trim(), form.password.value, form.nickname.value.trim());
      } catch (err) {
        $('#signin-error').textContent = errorText(err);
      } finally {
        for (const button of form.querySelectorAll('button')) button.disabled = false;
      }
    });
    $('#signout').addEventListener('click', () => this.signOut());
    $('#back').addEventListener('click', () => {
      document.body.dataset.view = 'rooms';
      this.current = null;
      this.renderRooms();
    });
    $('#room-details-toggle').addEventListener('click', (event) => {
      const open = $('#room-details').hidden;
      $('#room-details').hidden = !open;
      event.target.setAttribute('aria-expanded', String(open));
    });

    this.formAction('#create-form', async (form) => {
      const ids = parseUserIds(form.members.value);
      const isGroup = form.kind.value === 'group';
      if (!isGroup && ids.length !== 1) throw new Error('A private chat has exactly one other member.');
      const name = form.name.value.trim() || (isGroup ? 'New group' : 'Private chat');
      const roomId = await client.createRoom(name, ids, { isGroup });
      client.track(roomId, 0); // catch-up covers the new room from its first message
      form.reset();
      $('#new-room').open = false;
      await this.addRoom(roomId);
      this.renderRooms();
      await this.open(roomId);
    });
    this.formAction('#join-form', async (form, action) => {
      const [roomId] = parseUserIds(form.room.value);
      if (action === 'request') {
        await client.requestJoin(roomId);
        form.querySelector('.error').textContent = `Asked to join room ${roomId}: an admin of the room answers.`;
        return;
      }
      await client.join(roomId);
      client.track(roomId, 0);
      form.reset();
      $('#new-room').open = false;
      await this.addRoom(roomId);
      await this.open(roomId);
    });
    this.formAction('#add-form', async (form) => {
      await client.addMembers(this.current.roomId, parseUserIds(form.ids.value));
      form.reset();
      await this.loadMembers(this.current);
      this.renderDetails();
    });

    $('#composer').addEventListener('submit', (event) => {
      event.preventDefault();
      const box = $('#composer-text');
      this.send(box.value);
      box.value = '';
      box.focus();
    });
    $('#composer-text').addEventListener('input', () => this.typed());
    $('#composer-text').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $('#composer').requestSubmit();
      } else if (event.key === 'Escape' && this.composing) {
        event.preventDefault();
        this.cancelCompose();
      }
    });
    // One listener for the buttons of every message (they are rebuilt with the message).
    $('#messages').addEventListener('click', (event) => {
      const node = event.target.closest('.msg');
      const room = this.current;
      if (!node || !room) return;
      const button = event.target.closest('button[data-action]');
      if (button) {
        const message = room.messages.get(Number(node.dataset.seq));
        if (message) this.act(button.dataset.action, message, button);
        return;
      }
      const quote = event.target.closest('.quote');
      if (quote) this.showMessage(quote.dataset.replyTo);
    });
    $('#messages').addEventListener('scroll', (event) => {
      if (event.target.scrollTop < 60) this.loadOlder().catch((err) => console.warn('history:', err));
    });
    document.addEventListener('visibilitychange', () => this.current && this.markRead(this.current));
  }

  /** A form whose submit runs `action(form, submitter value)` and shows its error in the form. */
  formAction(selector, action) {
    const form = $(selector);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const error = form.querySelector('.error');
      error.textContent = '';
      try {
        await action(form, event.submitter?.value);
      } catch (err) {
        error.textContent = errorText(err);
      }
    });
  }
}

const app = new ChatApp();
window.pystackerApp = app; // for the browser tests and the curious: the app's state in the console
app.start().catch((err) => {
  $('#signin-error').textContent = errorText(err);
  app.show('signin');
});
