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

/** One room message. `id` is a string: snowflake ids exceed JavaScript's 2^53. */
export interface ChatMessage {
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
}

export interface SendResult {
  id: string;
  roomId: number;
  seq: number;
  clientMsgId: string | null;
  /** True when a retry found the first send's message (nothing was posted twice). */
  duplicate: boolean;
}

export interface HistoryPage {
  roomId: number;
  /** The room's newest seq when the page was read. */
  lastSeq: number;
  hasMore: boolean;
  messages: ChatMessage[];
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
export interface SendingContext { clientMsgId: string; roomId: number; content: Content }
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
  history(roomId: number, options?: { beforeSeq?: number | null; afterSeq?: number | null; limit?: number }): Promise<HistoryPage>;
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
  send(roomId: number, content: string | Content, options?: { clientMsgId?: string | null }): Promise<SendResult>;
  pendingSends(roomId?: number | null): SendingContext[];
  sync(roomId: number, afterSeq: number, limit?: number): Promise<{ messages: ChatMessage[]; hasMore: boolean }>;
  ping(): Promise<number>;
}

export declare class Backoff {
  constructor(options?: { initial?: number; maxDelay?: number; factor?: number; random?: () => number });
  readonly attempts: number;
  /** The next delay, in seconds. */
  next(): number;
  reset(): void;
}

/** Pure ordering: what may be handed on next, per room. */
export declare class RoomOrder {
  constructor(options?: { maxHeld?: number });
  position(roomId: number): number | null;
  setPosition(roomId: number, seq: number): ChatMessage[];
  forget(roomId: number): void;
  offer(message: ChatMessage): ChatMessage[];
  gaps(): [number, number][];
}

export declare function newClientMsgId(): string;
export declare function tokenClaims(token: string): Record<string, unknown> | null;
export declare function asContent(content: string | Content): Content;
export declare function messageFromFrame(frame: Record<string, unknown>): ChatMessage;
export declare function claimDeviceId(options?: { storage?: Storage; tabStorage?: Storage; locks?: LockManager; key?: string }): Promise<string>;
