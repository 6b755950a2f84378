// Type declarations of pystacker.js (PyStacker's JavaScript SDK). Hand-written: the module has no
// build step; tests/test_web_pages.py checks that every export of the module is declared here.

export declare const VERSION: string;

export declare const State: Readonly<{ Disconnected: 'disconnected'; Connecting: 'connecting'; Connected: 'connected' }>;
export type ConnectionState = 'disconnected' | 'connecting' | 'connected';

/** A refusal: `status` is the HTTP status or the error frame's code (0: the server was not reached). */
export declare class PyStackerError extends Error {
  constructor(status: number, msg: string, retryAfter?: number | null);
  readonly status: number;
  readonly msg: string;
  /** Seconds to wait, on a 429. */
  readonly retryAfter: number | null;
}

export interface Content {
  type: string;
  [key: string]: unknown;
}

/** A message id: the decimal string the SDK gives (`ChatMessage.id`). Snowflake ids exceed JavaScript's
 *  2^53, so a number is accepted only while it is a safe integer; a BigInt is fine. */
export type MessageId = string | bigint;

/** The short quote of the message a reply answers. */
export interface ReplyQuote {
  messageId: string;
  senderId: number;
  /** The start of its text (80 characters at most), "[type]" for other content, "" once recalled. */
  preview: string;
  recalled: boolean;
}

export interface Reaction {
  emoji: string;
  count: number;
  /** The caller is one of those who reacted so. */
  me: boolean;
}

/** One room message, in its current state. `id` is a string: snowflake ids exceed JavaScript's 2^53. */
export interface ChatMessage {
  kind: 'message';
  id: string;
  roomId: number;
  /** Dense per room: 1, 2, 3, ... (0 only for frames of GoStacker components). */
  seq: number;
  senderId: number;
  type: string;
  content: Content;
  /** The text of a text message, else null. */
  text: string | null;
  clientMsgId: string | null;
  /** Milliseconds since the epoch. */
  ts: number;
  /** The message this one answers, or null. */
  replyTo: ReplyQuote | null;
  /** When it was last edited (ms), or null. */
  editedAt: number | null;
  /** A tombstone: its content is gone (`content` is `{type}`, `text` null). */
  recalled: boolean;
  recalledBy: number | null;
  recalledAt: number | null;
  /** From history pages (live messages start with none); follow `reaction` events with applyEvent. */
  reactions: Reaction[];
}

interface RoomEventBase {
  /** The event's own id (string) in the room's log. */
  id: string;
  roomId: number;
  /** Its seq in the room's log: messages and events share one dense sequence. */
  seq: number;
  /** Who did it (editor, recaller, reactor). */
  senderId: number;
  /** The message it changes. */
  messageId: string;
}

export interface EditEvent extends RoomEventBase {
  kind: 'edit';
  /** Null when the message was recalled since (a recall blanks its edits; its recall event follows). */
  content: Content | null;
  /** The new text of a text message, else null. */
  text: string | null;
  editedAt: number | null;
}

export interface RecallEvent extends RoomEventBase {
  kind: 'recall';
  by: number;
  recalledAt: number | null;
}

export interface ReactionEvent extends RoomEventBase {
  kind: 'reaction';
  userId: number;
  emoji: string;
  on: boolean;
  /** The emoji's count on the message now. */
  count: number;
}

export type RoomEvent = EditEvent | RecallEvent | ReactionEvent;
/** An entry of a room's log. */
export type RoomEntry = ChatMessage | RoomEvent;

export interface SendResult {
  id: string;
  roomId: number;
  seq: number;
  clientMsgId: string | null;
  /** True when a retry found the first send's message (nothing was posted twice). */
  duplicate: boolean;
}

export interface EditResult {
  messageId: string;
  roomId: number;
  seq: number | null;
  editedAt: number | null;
  clientMsgId: string;
  /** A retry found the first attempt's answer: nothing was applied twice. */
  duplicate: boolean;
}

export interface RecallResult {
  messageId: string;
  roomId: number;
  seq: number | null;
  clientMsgId: string;
  duplicate: boolean;
}

export interface ReactResult {
  messageId: string;
  roomId: number;
  emoji: string;
  on: boolean;
  /** The emoji's count now. */
  count: number;
  /** Null when nothing changed (the reaction was already so). */
  seq: number | null;
  clientMsgId: string;
  duplicate: boolean;
}

export interface PendingOperation {
  kind: 'edit' | 'recall' | 'react';
  clientMsgId: string;
  messageId: string;
}

export interface HistoryPage {
  roomId: number;
  /** The room's newest seq when the page was read (events included). */
  lastSeq: number;
  hasMore: boolean;
  /** In their current state, without those the caller hid. */
  messages: ChatMessage[];
  /** Only with `events: true`: the log as written (messages as sent, and events), by seq. */
  entries?: RoomEntry[];
}

export interface LastMessage {
  id: string;
  seq: number;
  senderId: number;
  type: string;
  preview: string;
  ts: number;
}

export interface JoinedRoom {
  roomId: number;
  lastSeq: number;
  readSeq: number;
  unread: number;
  lastMessage: LastMessage | null;
}

export interface JoinedRooms {
  roomIds: number[];
  /** The server's read state per room; null from a server without read state. */
  rooms: JoinedRoom[] | null;
}

export interface RoomInfo {
  roomId: number;
  name: string;
  isGroup: boolean;
  memberCount: number;
  creatorId: number;
}

export interface Member {
  userId: number;
  username: string;
  nickname: string;
  /** 0 owner, 1 admin, 2 member. */
  role: number;
}

export interface JoinRequest {
  requestId: number;
  roomId: number;
  userId: number;
  message: string;
  createdAt: string;
}

export interface ReadState {
  roomId: number;
  lastSeq: number;
  members: Map<number, number>;
}

export interface ClientOptions {
  metaUrl: string;
  sendUrl: string;
  registryUrl: string;
  /** A token kept from an earlier login. */
  token?: string | null;
  /** Default: claimDeviceId() (kept in localStorage, one per open tab). */
  deviceId?: string | null;
  /** Milliseconds; each HTTP request and each socket request (default 10000). */
  requestTimeout?: number;
  connectTimeout?: number;
  /** Milliseconds between application pings (0: none) and the deadline of their pong. */
  pingInterval?: number;
  pongTimeout?: number;
  /** A connection that lived this long (ms) resets the backoff. */
  stableAfter?: number;
  /** Milliseconds to gather `ack` frames. */
  ackDelay?: number;
  backoff?: Backoff;
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  /** Drop the socket on the browser's `offline` event and reconnect on `online` (default true). */
  watchNetwork?: boolean;
}

export interface StateContext { oldState: ConnectionState; newState: ConnectionState }
export interface ConnectingContext { code: number; reason: string; delay?: number }
export interface ConnectedContext { userId: number; gatewayId: string; deviceId: string }
/** `replaced`: closed with 4009 (another socket of this device); `deviceLimit`: closed with 4011 (the
 *  user has too many devices online). Neither reconnects by itself. */
export interface DisconnectedContext { code: number; reason: string; replaced?: boolean; deviceLimit?: boolean }
export interface WelcomeContext { userId: number; gatewayId: string; unread: number }
export interface SendingContext { clientMsgId: string; roomId: number; content: Content; replyTo: string | null }
export interface DeliveredContext { id: string; roomId: number; seq: number; clientMsgId: string | null }
export interface SendFailedContext { clientMsgId: string; roomId: number; error: PyStackerError }
export interface ReadContext { roomId: number; userId: number; seq: number }
export interface TypingContext { roomId: number; userId: number }
/** `online` while any device of the user is connected; else `lastSeen` (ms since the epoch; null: unknown). */
export interface PresenceContext { userId: number; online: boolean; lastSeen: number | null }
export interface TokenContext { token: string; userId: number }
export interface ErrorContext { error: PyStackerError }

export interface ClientEvents {
  state: StateContext;
  connecting: ConnectingContext;
  connected: ConnectedContext;
  disconnected: DisconnectedContext;
  welcome: WelcomeContext;
  /** Each room's messages once each, in seq order, without a hole (live, catch-up and gap fills). */
  message: ChatMessage;
  /** A message was edited (in seq order with the messages, live and in catch-up). */
  edit: EditEvent;
  /** A message was recalled: show it as a tombstone. */
  recall: RecallEvent;
  /** A member reacted to a message, or took his reaction back. */
  reaction: ReactionEvent;
  sending: SendingContext;
  /** The server stored the message (send_ok). */
  accepted: SendResult;
  /** Every copy of your message is handed on (the server's `ack` frame). */
  delivered: DeliveredContext;
  'send-failed': SendFailedContext;
  /** A read mark moved: yours (from any device) or another member's (a read receipt). */
  read: ReadContext;
  /** Another member is typing (repeated every few seconds while he types: show it ~5 s after the last). */
  typing: TypingContext;
  /** A watched user's presence: his state when watching starts, then each change. */
  presence: PresenceContext;
  token: TokenContext;
  /** A frame of a type this SDK does not know, as it came. */
  frame: Record<string, unknown> & { type: string };
  error: ErrorContext;
}

export declare class PyStackerClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly token: string | null;
  readonly userId: number | null;
  readonly username: string | null;
  readonly gatewayId: string | null;
  readonly deviceId: string | null;

  on<K extends keyof ClientEvents>(name: K, listener: (ctx: ClientEvents[K]) => void): () => void;
  once<K extends keyof ClientEvents>(name: K, listener: (ctx: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(name: K, listener: (ctx: ClientEvents[K]) => void): void;

  useToken(token: string): void;
  tokenExpired(marginMs?: number): boolean;
  register(username: string, password: string, nickname?: string): Promise<number>;
  login(username: string, password: string): Promise<{ token: string; userId: number }>;
  logout(): void;
  profile(): Promise<{ user_id: number; username: string; nickname: string | null; created_at: string }>;

  createRoom(name: string, memberIds?: number[], options?: { isGroup?: boolean }): Promise<number>;
  addMembers(roomId: number, memberIds: number[]): Promise<number[]>;
  join(roomId: number): Promise<void>;
  leave(roomId: number): Promise<void>;
  roomInfo(roomId: number): Promise<RoomInfo>;
  members(roomId: number): Promise<Member[]>;
  searchRooms(text?: string, limit?: number): Promise<{ roomId: number; name: string; creatorId: number }[]>;
  requestJoin(roomId: number, message?: string | null): Promise<number>;
  joinRequests(roomId: number): Promise<JoinRequest[]>;
  respondJoin(requestId: number, approve: boolean): Promise<void>;
  joinedRooms(): Promise<JoinedRooms>;
  history(roomId: number, options?: { beforeSeq?: number | null; afterSeq?: number | null; limit?: number; events?: boolean }): Promise<HistoryPage>;
  readState(roomId: number): Promise<ReadState>;
  markRead(roomId: number, seq: number): Promise<number>;
  /** Tell the room's other members you are typing (dropped when not connected; the server forwards
   *  one per 3 s, so calling it on every keystroke is fine). */
  typing(roomId: number): void;
  presence(userIds: number[]): Promise<Map<number, PresenceContext>>;
  /** Watch these users' presence (at most 200; replaces the list; [] stops); kept across reconnects. */
  watchPresence(userIds: number[]): void;

  track(roomId: number, lastSeq: number): void;
  position(roomId: number): number | null;
  connect(): void;
  disconnect(reason?: string): void;
  reconnect(): void;
  /** `replyTo`: a message of the same room this one answers. */
  send(roomId: number, content: string | Content, options?: { clientMsgId?: string | null; replyTo?: MessageId | null }): Promise<SendResult>;
  /** Your message's new content (sender only, within the server's edit window). */
  edit(messageId: MessageId, content: string | Content, options?: { clientMsgId?: string | null }): Promise<EditResult>;
  /** Recall for everyone: your own message within the recall window, any message as the room's owner or an admin. */
  recall(messageId: MessageId, options?: { clientMsgId?: string | null }): Promise<RecallResult>;
  /** Add (`on`, the default) or take back your reaction. */
  react(messageId: MessageId, emoji: string, on?: boolean, options?: { clientMsgId?: string | null }): Promise<ReactResult>;
  /** Hide a message from your own history on every device (nobody is told). */
  hide(messageId: MessageId): Promise<{ messageId: string; roomId: number }>;
  pendingSends(roomId?: number | null): SendingContext[];
  pendingOperations(): PendingOperation[];
  sync(roomId: number, afterSeq: number, limit?: number): Promise<{ entries: RoomEntry[]; messages: ChatMessage[]; events: RoomEvent[]; hasMore: boolean }>;
  ping(): Promise<number>;
}

export declare class Backoff {
  constructor(options?: { initial?: number; maxDelay?: number; factor?: number; random?: () => number });
  readonly attempts: number;
  /** The next delay, in seconds. */
  next(): number;
  reset(): void;
}

/** Pure ordering: what may be handed on next, per room (messages and events share the room's seqs). */
export declare class RoomOrder {
  constructor(options?: { maxHeld?: number });
  position(roomId: number): number | null;
  setPosition(roomId: number, seq: number): RoomEntry[];
  forget(roomId: number): void;
  offer(entry: RoomEntry): RoomEntry[];
  gaps(): [number, number][];
}

export declare function newClientMsgId(): string;
export declare function tokenClaims(token: string): Record<string, unknown> | null;
export declare function asContent(content: string | Content): Content;
export declare function messageFromFrame(frame: Record<string, unknown>): ChatMessage;
export declare const EVENT_TYPES: readonly ['edit', 'recall', 'reaction'];
/** An edit, recall or reaction frame as an event; null for other frames. */
export declare function eventFromFrame(frame: Record<string, unknown>): RoomEvent | null;
/** The message after the event (a new object; the same one if the event is neither about it nor about
 *  the message it quotes). Idempotent; `myUserId` decides a reaction's `me`. */
export declare function applyEvent(message: ChatMessage, event: RoomEvent, myUserId?: number | null): ChatMessage;
export declare function claimDeviceId(options?: { storage?: Storage; tabStorage?: Storage; locks?: LockManager; key?: string }): Promise<string>;
