// Pure helpers of the chat app: what a message, a day or a room is called on screen. No DOM, no I/O.

/** The day a timestamp (ms) falls on, in the browser's time zone: the key of a day separator. */
export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}

/** "Today", "Yesterday" or the date, for a day separator. */
export function dayLabel(ts, now = Date.now()) {
  if (dayKey(ts) === dayKey(now)) return 'Today';
  if (dayKey(ts) === dayKey(now - 86400000)) return 'Yesterday';
  return new Date(ts).toLocaleDateString(undefined, { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric' });
}

export function timeLabel(ts) {
  return new Date(ts).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/** "2, 3,4" -> [2, 3, 4]; throws on anything that is not a positive integer. */
export function parseUserIds(text) {
  const parts = String(text).split(/[\s,]+/).filter(Boolean);
  const ids = parts.map((part) => {
    if (!/^\d{1,18}$/.test(part) || Number(part) < 1) throw new Error(`"${part}" is not a user id`);
    return Number(part);
  });
  return [...new Set(ids)];
}

/** What a recalled message shows instead of its content. */
export const RECALLED_TEXT = 'Message recalled';

/** The emoji a message can be given from its React menu (any emoji others sent shows too). */
export const REACTION_EMOJI = Object.freeze(['👍', '❤️', '😂', '🎉', '😮']);

/** The one line a room list shows of a message. */
export function previewOf(message) {
  if (!message) return 'No messages yet';
  if (message.recalled) return RECALLED_TEXT;
  if (message.text !== null && message.text !== undefined) return message.text;
  if (message.preview) return message.preview;
  return `[${message.type || 'message'}]`;
}

/** What a message of the user says about its state, as far as the server reports it. */
export const STATE_LABELS = Object.freeze({
  sending: 'Sending…', // waiting for the server's send_ok (retried over every reconnect)
  accepted: 'Sent', // stored with its seq (send_ok)
  delivered: 'Delivered', // in every member's gateway inbox (the ack frame)
  read: 'Read', // another member's read mark reached it
  failed: 'Not sent',
});

/** The state to show for a message of the user's, given the other members' read marks. */
export function ownState(message, othersRead) {
  if (message.state === 'sending' || message.state === 'failed') return message.state;
  if (message.seq > 0 && othersRead >= message.seq) return 'read';
  return message.state || 'accepted';
}

/** The line of a reply's quote: the start of the quoted text, or what became of it. */
export function quoteText(quote) {
  if (!quote) return '';
  if (quote.recalled) return RECALLED_TEXT;
  return quote.preview || 'Message';
}
