//! The chat's state and its one entry point, [`App::update`]: an [`Input`]
//! (a key, an SDK event, the outcome of a request) changes the state and
//! returns the [`Effect`]s to carry out (requests to make, the sync key to
//! persist). No I/O and no clock here: the caller passes the time in, so the
//! whole client runs the same under a unit test, the end-to-end test and a
//! terminal.

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use pigeon_client::ClientEvent;
use pigeon_client::v1::{self, event::Kind};

/// Messages asked for per history page.
pub const HISTORY_PAGE_MESSAGES: u32 = 50;
/// Messages kept per conversation; the oldest go first (paging back reloads them).
pub const MESSAGES_PER_CONVERSATION_MAX: usize = 2000;
/// Conversations kept; the least recently active go first.
pub const CONVERSATIONS_MAX: usize = 1000;
/// Characters the input line holds.
pub const INPUT_CHARS_MAX: usize = 4000;
/// Sent-but-unacknowledged messages per conversation.
pub const PENDING_PER_CONVERSATION_MAX: usize = 100;
/// How often `typing = true` is repeated while the user types (the server's
/// default relay throttle; PROTOCOL.md §13.2).
pub const TYPING_REPEAT_MS: i64 = 2000;
/// No keystroke for this long means the user stopped typing.
pub const TYPING_IDLE_MS: i64 = 5000;
/// A typing indicator not refreshed for this long is dropped.
pub const TYPING_SHOW_MS: i64 = 6000;
/// How long a notice stays on the status line.
pub const NOTICE_SHOW_MS: i64 = 8000;
/// Typists shown per conversation.
pub const TYPISTS_PER_CONVERSATION_MAX: usize = 16;
/// Receipt positions kept on disk between runs (the most recently active
/// conversations' first).
pub const RECEIPTS_STORED_MAX: usize = 20_000;

const _: () = assert!(TYPING_REPEAT_MS < TYPING_SHOW_MS);
const _: () = assert!(HISTORY_PAGE_MESSAGES as usize <= MESSAGES_PER_CONVERSATION_MAX);

/// What the chat reacts to.
#[derive(Debug)]
pub enum Input {
    /// A key press.
    Key(KeyEvent),
    /// The terminal's size (at start and on every change).
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Time passed (expires typing indicators and notices).
    Tick,
    /// An event of the reconnecting SDK client.
    Client(ClientEvent),
    /// A request made for an [`Effect`] finished.
    Done(Outcome),
}

/// The answer to a request the chat asked for. Errors are for a person.
#[derive(Debug)]
pub enum Outcome {
    /// [`Effect::LoadConversations`].
    Conversations(Result<Vec<v1::ConversationSummary>, String>),
    /// [`Effect::LoadHistory`].
    History {
        /// As asked.
        target: HistoryTarget,
        /// As asked.
        before: u64,
        /// The page.
        result: Result<v1::HistoryResponse, String>,
    },
    /// [`Effect::Send`].
    Sent {
        /// As asked.
        conversation_id: String,
        /// As asked.
        client_msg_id: String,
        /// The acknowledgement.
        result: Result<v1::SendResponse, String>,
    },
    /// [`Effect::MarkRead`].
    MarkedRead {
        /// As asked.
        conversation_id: String,
        /// The new position and count.
        result: Result<v1::MarkReadResponse, String>,
    },
    /// [`Effect::CreateGroup`].
    GroupCreated(Result<v1::GroupInfo, String>),
}

/// Whose history to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryTarget {
    /// A known conversation.
    Conversation(String),
    /// The direct conversation with this user (opened with `/new`).
    User(String),
}

/// What the caller must do after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// List the conversations (answer: [`Outcome::Conversations`]).
    LoadConversations,
    /// Load a page of history, `before` 0 for the newest (answer: [`Outcome::History`]).
    LoadHistory {
        /// Whose.
        target: HistoryTarget,
        /// Messages with conv_seq below this.
        before: u64,
    },
    /// Send a text (answer: [`Outcome::Sent`]); retry with the same id.
    Send {
        /// Where.
        conversation_id: String,
        /// Chosen here, so the message coming back as an event is recognised.
        client_msg_id: String,
        /// What.
        text: String,
    },
    /// Mark a conversation read (answer: [`Outcome::MarkedRead`]).
    MarkRead {
        /// Which.
        conversation_id: String,
        /// Up to and including this conv_seq.
        up_to: u64,
    },
    /// Tell the conversation the user is (or stopped) typing; no answer.
    SetTyping {
        /// Where.
        conversation_id: String,
        /// Started or stopped.
        typing: bool,
    },
    /// Create a group (answer: [`Outcome::GroupCreated`]).
    CreateGroup {
        /// Its name.
        name: String,
        /// Usernames to add.
        members: Vec<String>,
    },
    /// Store these receipt positions (before the key that follows: they
    /// come from events the key moves past, and the server cannot tell them again).
    PersistReceipts(Vec<StoredReceipt>),
    /// Store this sync key: the events before it are applied.
    PersistKey(Vec<u8>),
    /// Leave the chat.
    Quit,
}

/// The account the chat runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// The user id.
    pub user_id: u64,
    /// The username.
    pub username: String,
}

/// The state of the link to the server, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Up.
    Connected,
    /// Lost; the client retries.
    Reconnecting(String),
    /// Stopped for good (for example a revoked token).
    Stopped(String),
}

/// A message as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its position in the conversation.
    pub conv_seq: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// Their username.
    pub sender: String,
    /// When, Unix milliseconds.
    pub sent_at_ms: i64,
    /// The text (empty once recalled).
    pub text: String,
    /// Recalled by its sender.
    pub recalled: bool,
    /// When last edited (0: never).
    pub edited_at_ms: i64,
}

impl Message {
    fn from_wire(m: &v1::Message) -> Message {
        Message {
            conv_seq: m.conv_seq,
            sender_id: m.sender_id,
            sender: m.sender_username.clone(),
            sent_at_ms: m.sent_at_ms,
            text: m
                .content
                .as_ref()
                .map(|c| c.text.clone())
                .unwrap_or_default(),
            recalled: m.recalled,
            edited_at_ms: m.edited_at_ms,
        }
    }

    /// Folds another copy of the same message in: recalls and the newest
    /// edit win, whatever order the copies come in.
    fn merge(&mut self, other: Message) {
        if other.recalled {
            self.recalled = true;
            self.text.clear();
        } else if !self.recalled && other.edited_at_ms > self.edited_at_ms {
            self.text = other.text;
            self.edited_at_ms = other.edited_at_ms;
        }
    }
}

/// A message sent from here and not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The id it was sent with.
    pub client_msg_id: String,
    /// What.
    pub text: String,
    /// When it was typed, Unix milliseconds.
    pub at_ms: i64,
    /// Why it failed, once it did.
    pub failed: Option<String>,
}

/// Direct or group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationKind {
    /// With one other user (or oneself: notes).
    Direct {
        /// The other participant.
        peer_user_id: u64,
        /// Their username, once known.
        peer_username: String,
    },
    /// A group.
    Group {
        /// Its name, once known.
        name: String,
        /// Member count, once known.
        member_count: u32,
        /// Ended by its owner.
        dissolved: bool,
        /// The caller left or was removed.
        left: bool,
    },
}

/// How far a participant got in one of our conversations, as stored between runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredReceipt {
    /// The conversation.
    pub conversation_id: String,
    /// The participant.
    pub user_id: u64,
    /// Delivered up to this conv_seq.
    pub delivered: u64,
    /// Read up to this conv_seq.
    pub read: u64,
}

/// How far a participant got in one of our conversations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions {
    /// Delivered up to this conv_seq.
    pub delivered: u64,
    /// Read up to this conv_seq.
    pub read: u64,
}

/// One conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Its id (`d:A:B` or `g:N`).
    pub id: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Loaded messages by conv_seq: contiguous from the oldest loaded one.
    pub messages: BTreeMap<u64, Message>,
    /// Sent from here, not acknowledged yet.
    pub pending: Vec<Pending>,
    /// Messages from others after `read_up_to`.
    pub unread: u64,
    /// Our read position.
    pub read_up_to: u64,
    /// The newest conv_seq known (loaded or not).
    pub newest_seq: u64,
    /// Last activity for sorting, Unix milliseconds.
    pub activity_ms: i64,
    /// `sender: text` of the newest message.
    pub preview: String,
    /// Whether the newest page was loaded.
    pub history_loaded: bool,
    /// A history request is in flight.
    pub history_loading: bool,
    /// Older messages exist beyond the oldest loaded one.
    pub has_older: bool,
    /// Other participants' positions (from receipts).
    pub receipts: BTreeMap<u64, Positions>,
    /// Large groups: (delivered, read, members) counts per own message.
    pub summaries: BTreeMap<u64, (u32, u32, u32)>,
    /// Who is typing, until when (Unix milliseconds).
    pub typists: BTreeMap<String, i64>,
    /// Messages hidden below the view (PgUp scrolls back).
    pub scroll: usize,
}

impl Conversation {
    fn new(id: &str, me: u64) -> Conversation {
        Conversation {
            id: id.to_string(),
            kind: kind_from_id(id, me),
            messages: BTreeMap::new(),
            pending: Vec::new(),
            unread: 0,
            read_up_to: 0,
            newest_seq: 0,
            activity_ms: 0,
            preview: String::new(),
            history_loaded: false,
            history_loading: false,
            has_older: false,
            receipts: BTreeMap::new(),
            summaries: BTreeMap::new(),
            typists: BTreeMap::new(),
            scroll: 0,
        }
    }

    /// The name shown for it.
    pub fn title(&self) -> String {
        match &self.kind {
            ConversationKind::Direct { peer_username, .. } if !peer_username.is_empty() => {
                peer_username.clone()
            }
            ConversationKind::Direct { peer_user_id, .. } => format!("user {peer_user_id}"),
            ConversationKind::Group { name, .. } if !name.is_empty() => name.clone(),
            ConversationKind::Group { .. } => self.id.clone(),
        }
    }

    /// Whether it is a group.
    pub fn is_group(&self) -> bool {
        matches!(self.kind, ConversationKind::Group { .. })
    }

    /// The mark of one of our messages: `✓` stored, `✓✓` delivered, `✓✓
    /// read` read (in groups with the number of readers).
    pub fn mark(&self, conv_seq: u64) -> String {
        if let Some(&(delivered, read, _)) = self.summaries.get(&conv_seq) {
            return match (delivered, read) {
                (_, r) if r > 0 => format!("✓✓ read {r}"),
                (d, _) if d > 0 => "✓✓".into(),
                _ => "✓".into(),
            };
        }
        let read = self
            .receipts
            .values()
            .filter(|p| p.read >= conv_seq)
            .count();
        let delivered = self
            .receipts
            .values()
            .filter(|p| p.delivered >= conv_seq || p.read >= conv_seq)
            .count();
        match (self.is_group(), read, delivered) {
            (false, r, _) if r > 0 => "✓✓ read".into(),
            (true, r, _) if r > 0 => format!("✓✓ read {r}"),
            (_, _, d) if d > 0 => "✓✓".into(),
            _ => "✓".into(),
        }
    }

    /// The usernames typing here at `now_ms`.
    pub fn typing_now(&self, now_ms: i64) -> Vec<&str> {
        self.typists
            .iter()
            .filter(|&(_, &until)| until > now_ms)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Records the newest message and its preview if `m` is newer than what is known.
    fn note_newest(&mut self, m: &Message) -> bool {
        if m.conv_seq <= self.newest_seq {
            if m.conv_seq == self.newest_seq {
                self.preview = preview_of(m);
            }
            return false;
        }
        self.newest_seq = m.conv_seq;
        self.activity_ms = self.activity_ms.max(m.sent_at_ms);
        self.preview = preview_of(m);
        true
    }

    fn insert(&mut self, m: Message) {
        match self.messages.get_mut(&m.conv_seq) {
            Some(existing) => existing.merge(m),
            None => {
                self.messages.insert(m.conv_seq, m);
                while self.messages.len() > MESSAGES_PER_CONVERSATION_MAX {
                    self.messages.pop_first();
                    self.has_older = true;
                }
            }
        }
    }

    /// Unread count after our read position moved to `up_to`.
    fn read_to(&mut self, up_to: u64, me: u64) {
        if up_to <= self.read_up_to {
            return;
        }
        self.read_up_to = up_to;
        if up_to >= self.newest_seq {
            self.unread = 0;
        } else {
            let left = self
                .messages
                .range(up_to + 1..)
                .filter(|(_, m)| m.sender_id != me)
                .count() as u64;
            self.unread = self.unread.min(left.max(1));
        }
    }
}

/// Positions only grow.
fn raise(p: &mut Positions, to: Positions) {
    p.delivered = p.delivered.max(to.delivered);
    p.read = p.read.max(to.read);
}

fn preview_of(m: &Message) -> String {
    let text = if m.recalled {
        "(recalled)"
    } else {
        m.text.as_str()
    };
    let first_line = text.lines().next().unwrap_or("");
    format!("{}: {first_line}", m.sender)
}

/// Direct (`d:A:B`) or group (`g:N`), from the id alone.
fn kind_from_id(id: &str, me: u64) -> ConversationKind {
    if let Some(rest) = id.strip_prefix("d:") {
        let ids: Vec<u64> = rest.split(':').filter_map(|s| s.parse().ok()).collect();
        let peer = ids.iter().copied().find(|&u| u != me).unwrap_or(me);
        return ConversationKind::Direct {
            peer_user_id: peer,
            peer_username: String::new(),
        };
    }
    ConversationKind::Group {
        name: String::new(),
        member_count: 0,
        dissolved: false,
        left: false,
    }
}

/// A line on the status bar for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// For a person.
    pub text: String,
    /// An error rather than news.
    pub error: bool,
    /// Shown until then, Unix milliseconds.
    pub until_ms: i64,
}

/// Counters for tests and curiosity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Event batches applied.
    pub batches: u64,
    /// Message events applied (history pages not counted).
    pub message_events: u64,
}

/// Typing we announced and have not withdrawn.
#[derive(Debug, Clone)]
struct TypingSent {
    conversation_id: String,
    sent_at_ms: i64,
    last_key_ms: i64,
}

/// Makes client message ids (UUIDs in production, a counter in tests).
pub type IdSource = Box<dyn FnMut() -> String + Send>;

/// The whole chat state.
pub struct App {
    me: Me,
    server: String,
    link: Link,
    conversations: BTreeMap<String, Conversation>,
    /// Conversation ids, most recently active first.
    order: Vec<String>,
    selected: Option<String>,
    input: String,
    notice: Option<Notice>,
    typing_sent: Option<TypingSent>,
    conversations_loading: bool,
    /// A `/new USER` waiting for its history answer.
    opening: Option<String>,
    /// Receipt positions of conversations not loaded yet (from disk, or
    /// kept over a resync).
    saved_receipts: BTreeMap<String, BTreeMap<u64, Positions>>,
    new_id: IdSource,
    size: (u16, u16),
    now_ms: i64,
    utc_offset_secs: i32,
    stats: Stats,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("me", &self.me)
            .field("link", &self.link)
            .field("order", &self.order)
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl App {
    /// A chat for `me` on `server` (shown in the status line); `new_id`
    /// makes client message ids; times are shown at `utc_offset_secs`.
    pub fn new(me: Me, server: &str, new_id: IdSource, utc_offset_secs: i32) -> App {
        App {
            me,
            server: server.to_string(),
            link: Link::Connecting,
            conversations: BTreeMap::new(),
            order: Vec::new(),
            selected: None,
            input: String::new(),
            notice: None,
            typing_sent: None,
            conversations_loading: false,
            opening: None,
            saved_receipts: BTreeMap::new(),
            new_id,
            size: (80, 24),
            now_ms: 0,
            utc_offset_secs,
            stats: Stats::default(),
        }
    }

    /// The account.
    pub fn me(&self) -> &Me {
        &self.me
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The link state.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Conversations, most recently active first.
    pub fn conversations(&self) -> impl Iterator<Item = &Conversation> {
        self.order
            .iter()
            .filter_map(|id| self.conversations.get(id))
    }

    /// One conversation.
    pub fn conversation(&self, id: &str) -> Option<&Conversation> {
        self.conversations.get(id)
    }

    /// The conversation in view.
    pub fn selected(&self) -> Option<&Conversation> {
        self.selected
            .as_deref()
            .and_then(|id| self.conversations.get(id))
    }

    /// Whether a listing of the conversations is on its way.
    pub fn listing(&self) -> bool {
        self.conversations_loading
    }

    /// The input line.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The current notice, if it has not expired.
    pub fn notice(&self) -> Option<&Notice> {
        self.notice.as_ref().filter(|n| n.until_ms > self.now_ms)
    }

    /// The time of the last update.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The offset local times are shown at.
    pub fn utc_offset_secs(&self) -> i32 {
        self.utc_offset_secs
    }

    /// The terminal size last given.
    pub fn size(&self) -> (u16, u16) {
        self.size
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes receipt positions stored by an earlier run; they apply to
    /// their conversations as those appear.
    pub fn restore_receipts(&mut self, stored: Vec<StoredReceipt>) {
        for r in stored.into_iter().take(RECEIPTS_STORED_MAX) {
            let p = Positions {
                delivered: r.delivered,
                read: r.read,
            };
            match self.conversations.get_mut(&r.conversation_id) {
                Some(conv) => raise(conv.receipts.entry(r.user_id).or_default(), p),
                None => {
                    let saved = self.saved_receipts.entry(r.conversation_id).or_default();
                    raise(saved.entry(r.user_id).or_default(), p);
                }
            }
        }
    }

    /// The receipt positions to store, most recently active conversations first.
    pub fn receipts_to_store(&self) -> Vec<StoredReceipt> {
        let loaded = self
            .order
            .iter()
            .filter_map(|id| self.conversations.get(id))
            .map(|c| (&c.id, &c.receipts));
        loaded
            .chain(self.saved_receipts.iter())
            .flat_map(|(id, receipts)| {
                receipts.iter().map(|(&user_id, p)| StoredReceipt {
                    conversation_id: id.clone(),
                    user_id,
                    delivered: p.delivered,
                    read: p.read,
                })
            })
            .take(RECEIPTS_STORED_MAX)
            .collect()
    }

    /// Applies one input at `now_ms` and returns what to do.
    pub fn update(&mut self, input: Input, now_ms: i64) -> Vec<Effect> {
        self.now_ms = now_ms;
        let mut fx = Vec::new();
        match input {
            Input::Key(key) => self.on_key(key, &mut fx),
            Input::Resize { width, height } => self.size = (width, height),
            Input::Tick => self.on_tick(&mut fx),
            Input::Client(event) => self.on_client(event, &mut fx),
            Input::Done(outcome) => self.on_outcome(outcome, &mut fx),
        }
        fx
    }

    fn notify(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
            until_ms: self.now_ms + NOTICE_SHOW_MS,
        });
    }

    fn conversation_mut(&mut self, id: &str) -> &mut Conversation {
        if !self.conversations.contains_key(id) {
            let mut conv = Conversation::new(id, self.me.user_id);
            conv.receipts = self.saved_receipts.remove(id).unwrap_or_default();
            self.conversations.insert(id.to_string(), conv);
            self.order.push(id.to_string());
        }
        self.conversations.get_mut(id).expect("just inserted")
    }

    /// Sorts by activity and drops the least recently active beyond the maximum.
    fn reorder(&mut self) {
        let convs = &self.conversations;
        self.order.sort_by(|a, b| {
            let (ca, cb) = (&convs[a], &convs[b]);
            (cb.activity_ms, cb.newest_seq, b).cmp(&(ca.activity_ms, ca.newest_seq, a))
        });
        while self.order.len() > CONVERSATIONS_MAX {
            let Some(id) = self.order.pop() else { break };
            if self.selected.as_deref() == Some(id.as_str()) {
                self.order.push(id);
                break;
            }
            self.conversations.remove(&id);
        }
    }

    /// Lists the conversations unless a listing is already on its way.
    fn load_conversations(&mut self, fx: &mut Vec<Effect>) {
        if !self.conversations_loading {
            self.conversations_loading = true;
            fx.push(Effect::LoadConversations);
        }
    }

    // ------------------------------------------------------------ keys

    fn on_key(&mut self, key: KeyEvent, fx: &mut Vec<Effect>) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => self.quit(fx),
            KeyCode::Char('c') if ctrl => self.quit(fx),
            KeyCode::Char('n') if ctrl => self.input = "/new ".into(),
            KeyCode::Tab | KeyCode::Down => self.select_step(1, fx),
            KeyCode::BackTab | KeyCode::Up => self.select_step(-1, fx),
            KeyCode::PageUp => self.page_up(fx),
            KeyCode::PageDown => self.page_down(),
            KeyCode::Enter => self.submit(fx),
            KeyCode::Backspace => {
                self.input.pop();
                if self.input.is_empty() {
                    self.stop_typing(fx);
                }
            }
            KeyCode::Char(c)
                if !ctrl
                    && !key.modifiers.contains(KeyModifiers::ALT)
                    && self.input.chars().count() < INPUT_CHARS_MAX =>
            {
                self.input.push(c);
                self.typed(fx);
            }
            _ => {}
        }
    }

    fn quit(&mut self, fx: &mut Vec<Effect>) {
        self.stop_typing(fx);
        fx.push(Effect::Quit);
    }

    /// Moves the selection `step` places through the list (wrapping); with
    /// nothing selected, Tab starts at the top.
    fn select_step(&mut self, step: isize, fx: &mut Vec<Effect>) {
        if self.order.is_empty() {
            return;
        }
        let len = self.order.len() as isize;
        let at = self
            .selected
            .as_ref()
            .and_then(|id| self.order.iter().position(|o| o == id));
        let next = match at {
            None if step > 0 => 0,
            None => len - 1,
            Some(i) => (i as isize + step).rem_euclid(len),
        };
        let id = self.order[next as usize].clone();
        self.select(&id, fx);
    }

    /// Puts a conversation in view: loads its newest page once and marks it read.
    fn select(&mut self, id: &str, fx: &mut Vec<Effect>) {
        if self.selected.as_deref() != Some(id) {
            self.stop_typing(fx);
        }
        self.selected = Some(id.to_string());
        let conv = self.conversation_mut(id);
        conv.scroll = 0;
        if !conv.history_loaded && !conv.history_loading {
            conv.history_loading = true;
            fx.push(Effect::LoadHistory {
                target: HistoryTarget::Conversation(id.to_string()),
                before: 0,
            });
        }
        self.mark_read_in_view(fx);
    }

    /// Marks the conversation in view read up to its newest message, if needed.
    fn mark_read_in_view(&mut self, fx: &mut Vec<Effect>) {
        let Some(id) = self.selected.clone() else {
            return;
        };
        let me = self.me.user_id;
        let conv = self.conversation_mut(&id);
        if conv.newest_seq > conv.read_up_to || conv.unread > 0 {
            let up_to = conv.newest_seq;
            conv.read_to(up_to, me);
            conv.unread = 0;
            if up_to > 0 {
                fx.push(Effect::MarkRead {
                    conversation_id: id,
                    up_to,
                });
            }
        }
    }

    /// Half the message pane, in messages (at least one).
    fn page_messages(&self) -> usize {
        (usize::from(self.size.1) / 2).saturating_sub(3).max(1)
    }

    fn page_up(&mut self, fx: &mut Vec<Effect>) {
        let page = self.page_messages();
        let Some(id) = self.selected.clone() else {
            return;
        };
        let conv = self.conversation_mut(&id);
        let loaded = conv.messages.len();
        conv.scroll = (conv.scroll + page).min(loaded.saturating_sub(1));
        let near_top = loaded.saturating_sub(conv.scroll) <= page;
        if near_top
            && conv.has_older
            && !conv.history_loading
            && let Some(&oldest) = conv.messages.keys().next()
        {
            conv.history_loading = true;
            fx.push(Effect::LoadHistory {
                target: HistoryTarget::Conversation(id),
                before: oldest,
            });
        }
    }

    fn page_down(&mut self) {
        let page = self.page_messages();
        if let Some(id) = self.selected.clone() {
            let conv = self.conversation_mut(&id);
            conv.scroll = conv.scroll.saturating_sub(page);
        }
    }

    /// Enter: a command, or a message to the conversation in view.
    fn submit(&mut self, fx: &mut Vec<Effect>) {
        let line = self.input.trim().to_string();
        if line.is_empty() {
            return;
        }
        if line.starts_with('/') {
            if self.command(&line, fx) {
                self.input.clear();
            }
            return;
        }
        let Some(id) = self.selected.clone() else {
            self.notify(
                "no conversation in view: Tab to pick one, Ctrl-N to open one",
                true,
            );
            return;
        };
        let conv = self.conversation_mut(&id);
        if conv.pending.len() >= PENDING_PER_CONVERSATION_MAX {
            self.notify("too many messages waiting for the server", true);
            return;
        }
        self.input.clear();
        self.stop_typing(fx);
        let client_msg_id = (self.new_id)();
        let now = self.now_ms;
        let conv = self.conversation_mut(&id);
        conv.scroll = 0;
        conv.pending.push(Pending {
            client_msg_id: client_msg_id.clone(),
            text: line.clone(),
            at_ms: now,
            failed: None,
        });
        fx.push(Effect::Send {
            conversation_id: id,
            client_msg_id,
            text: line,
        });
    }

    /// Runs a `/command`; false leaves the input as it is (to fix it).
    fn command(&mut self, line: &str, fx: &mut Vec<Effect>) -> bool {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        match (name, args.as_slice()) {
            ("/new", [user]) => {
                self.opening = Some(user.to_string());
                fx.push(Effect::LoadHistory {
                    target: HistoryTarget::User(user.to_string()),
                    before: 0,
                });
                true
            }
            ("/group", [name, rest @ ..]) => {
                let (name, members) = match rest {
                    [] => (name.to_string(), Vec::new()),
                    [words @ .., last] => {
                        let mut full = vec![*name];
                        full.extend_from_slice(words);
                        let members = last
                            .split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect();
                        (full.join(" "), members)
                    }
                };
                fx.push(Effect::CreateGroup { name, members });
                true
            }
            ("/quit", []) => {
                self.quit(fx);
                true
            }
            ("/help", []) => {
                self.notify(HELP, false);
                true
            }
            _ => {
                self.notify(format!("{HELP} (not: {line})"), true);
                false
            }
        }
    }

    /// A character was typed: tell the conversation, at most every
    /// [`TYPING_REPEAT_MS`].
    fn typed(&mut self, fx: &mut Vec<Effect>) {
        let Some(id) = self.selected.clone() else {
            return;
        };
        if self.input.starts_with('/') {
            return;
        }
        let now = self.now_ms;
        match &mut self.typing_sent {
            Some(t) if t.conversation_id == id && now - t.sent_at_ms < TYPING_REPEAT_MS => {
                t.last_key_ms = now;
            }
            _ => {
                self.typing_sent = Some(TypingSent {
                    conversation_id: id.clone(),
                    sent_at_ms: now,
                    last_key_ms: now,
                });
                fx.push(Effect::SetTyping {
                    conversation_id: id,
                    typing: true,
                });
            }
        }
    }

    fn stop_typing(&mut self, fx: &mut Vec<Effect>) {
        if let Some(t) = self.typing_sent.take() {
            fx.push(Effect::SetTyping {
                conversation_id: t.conversation_id,
                typing: false,
            });
        }
    }

    fn on_tick(&mut self, fx: &mut Vec<Effect>) {
        let now = self.now_ms;
        if self
            .typing_sent
            .as_ref()
            .is_some_and(|t| now - t.last_key_ms >= TYPING_IDLE_MS)
        {
            self.stop_typing(fx);
        }
        for conv in self.conversations.values_mut() {
            conv.typists.retain(|_, &mut until| until > now);
        }
        if self.notice.as_ref().is_some_and(|n| n.until_ms <= now) {
            self.notice = None;
        }
    }

    // ------------------------------------------------------ SDK events

    fn on_client(&mut self, event: ClientEvent, fx: &mut Vec<Effect>) {
        match event {
            ClientEvent::Connected { welcome } => {
                self.link = Link::Connected;
                if welcome.user_id != 0 {
                    self.me = Me {
                        user_id: welcome.user_id,
                        username: welcome.username,
                    };
                }
                // The list may have changed while we were away (and after a
                // restart it is all we have).
                self.conversations_loading = false;
                self.load_conversations(fx);
                if let Some(id) = self.selected.clone() {
                    let conv = self.conversation_mut(&id);
                    if !conv.history_loaded {
                        conv.history_loading = true;
                        fx.push(Effect::LoadHistory {
                            target: HistoryTarget::Conversation(id),
                            before: 0,
                        });
                    }
                }
            }
            ClientEvent::Disconnected { reason } => {
                self.link = Link::Reconnecting(reason);
                // Typing is not resent after a reconnect (PROTOCOL.md §7.6).
                for conv in self.conversations.values_mut() {
                    conv.typists.clear();
                    conv.history_loading = false;
                }
                self.conversations_loading = false;
            }
            ClientEvent::Events { events, key } => {
                self.apply_events(events, fx);
                fx.push(Effect::PersistKey(key));
            }
            ClientEvent::Presence(_) => {}
            ClientEvent::Typing(t) => {
                if t.user_id == self.me.user_id {
                    return;
                }
                let until = self.now_ms + TYPING_SHOW_MS;
                let conv = self.conversation_mut(&t.conversation_id);
                if !t.typing {
                    conv.typists.remove(&t.username);
                } else if conv.typists.len() < TYPISTS_PER_CONVERSATION_MAX
                    || conv.typists.contains_key(&t.username)
                {
                    conv.typists.insert(t.username, until);
                }
            }
            ClientEvent::ResyncRequired => {
                // Start over from the server's view (PROTOCOL.md §7.8).
                fx.push(Effect::PersistKey(Vec::new()));
                let selected = self.selected.clone();
                // Receipts are not in the server's list or history: keep them.
                for (id, conv) in std::mem::take(&mut self.conversations) {
                    self.saved_receipts.insert(id, conv.receipts);
                }
                self.order.clear();
                self.selected = None;
                self.conversations_loading = false;
                self.load_conversations(fx);
                if let Some(id) = selected {
                    self.select(&id, fx);
                }
                self.notify("the stored sync key was too old: reloaded", false);
            }
            ClientEvent::Stopped { error } => {
                self.link = Link::Stopped(error.to_string());
                self.notify(format!("{error}: log in again with `pigeon login`"), true);
            }
        }
    }

    /// Applies one batch of events in order (idempotent: a replayed batch
    /// changes nothing).
    fn apply_events(&mut self, events: Vec<v1::Event>, fx: &mut Vec<Effect>) {
        self.stats.batches += 1;
        let me = self.me.user_id;
        let mut unknown_names = false;
        let mut receipts_changed = false;
        for event in events {
            let Some(kind) = event.kind else { continue };
            match kind {
                Kind::Message(m) => {
                    self.stats.message_events += 1;
                    unknown_names |= self.apply_message(&m);
                }
                Kind::ReadMarker(r) => self
                    .conversation_mut(&r.conversation_id)
                    .read_to(r.read_up_to, me),
                Kind::GroupChange(g) => self.apply_group_change(&g),
                Kind::Receipt(r) => {
                    let conv = self.conversation_mut(&r.conversation_id);
                    let p = conv.receipts.entry(r.user_id).or_default();
                    let before = *p;
                    match r.kind() {
                        v1::ReceiptKind::Read => raise(
                            p,
                            Positions {
                                delivered: r.up_to,
                                read: r.up_to,
                            },
                        ),
                        v1::ReceiptKind::Delivered => raise(
                            p,
                            Positions {
                                delivered: r.up_to,
                                read: 0,
                            },
                        ),
                        v1::ReceiptKind::Unspecified => {}
                    }
                    receipts_changed |= *p != before;
                }
                Kind::ReceiptSummary(s) => {
                    let conv = self.conversation_mut(&s.conversation_id);
                    let entry = conv.summaries.entry(s.conv_seq).or_default();
                    *entry = (
                        entry.0.max(s.delivered_count),
                        entry.1.max(s.read_count),
                        s.member_count,
                    );
                    while conv.summaries.len() > MESSAGES_PER_CONVERSATION_MAX {
                        conv.summaries.pop_first();
                    }
                }
                Kind::MessageRecalled(r) => {
                    let conv = self.conversation_mut(&r.conversation_id);
                    if let Some(m) = conv.messages.get_mut(&r.conv_seq) {
                        m.recalled = true;
                        m.text.clear();
                        if r.conv_seq == conv.newest_seq {
                            conv.preview = preview_of(m);
                        }
                    }
                }
                Kind::MessageEdited(e) => {
                    let conv = self.conversation_mut(&e.conversation_id);
                    if let Some(m) = conv.messages.get_mut(&e.conv_seq) {
                        let mut edited = m.clone();
                        edited.text = e.content.map(|c| c.text).unwrap_or_default();
                        edited.edited_at_ms = e.edited_at_ms;
                        m.merge(edited);
                        if e.conv_seq == conv.newest_seq {
                            conv.preview = preview_of(m);
                        }
                    }
                }
                Kind::MessageDeleted(d) => {
                    self.conversation_mut(&d.conversation_id)
                        .messages
                        .remove(&d.conv_seq);
                }
                Kind::BlockChanged(_) | Kind::FlagsChanged(_) => {}
            }
        }
        self.reorder();
        if receipts_changed {
            fx.push(Effect::PersistReceipts(self.receipts_to_store()));
        }
        self.mark_read_in_view(fx);
        if unknown_names {
            self.load_conversations(fx);
        }
    }

    /// Applies a message event; true if the conversation's name is unknown.
    fn apply_message(&mut self, m: &v1::Message) -> bool {
        let me = self.me.user_id;
        let in_view = self.selected.as_deref() == Some(m.conversation_id.as_str());
        let msg = Message::from_wire(m);
        let conv = self.conversation_mut(&m.conversation_id);
        if m.sender_id == me {
            conv.pending.retain(|p| p.client_msg_id != m.client_msg_id);
        } else {
            conv.typists.remove(&m.sender_username);
            if let ConversationKind::Direct { peer_username, .. } = &mut conv.kind
                && peer_username.is_empty()
            {
                *peer_username = m.sender_username.clone();
            }
        }
        let newer = conv.note_newest(&msg);
        conv.insert(msg);
        let unknown = match &conv.kind {
            ConversationKind::Direct { peer_username, .. } => peer_username.is_empty(),
            ConversationKind::Group { name, .. } => name.is_empty(),
        };
        if newer && m.sender_id == me {
            // The server counts a sender as having read their conversation.
            conv.read_up_to = conv.read_up_to.max(m.conv_seq);
            conv.unread = 0;
        } else if newer && m.conv_seq > conv.read_up_to && !in_view {
            conv.unread += 1;
            let title = conv.title();
            let text = if conv.is_group() {
                format!("new message from {} in {title}", m.sender_username)
            } else {
                format!("new message from {}", m.sender_username)
            };
            self.notify(text, false);
        }
        unknown
    }

    fn apply_group_change(&mut self, g: &v1::GroupChange) {
        let me = self.me.user_id;
        let conv = self.conversation_mut(&g.conversation_id);
        let about_me = g.members.iter().any(|m| m.user_id == me);
        let kind = g.kind();
        if let ConversationKind::Group {
            name,
            member_count,
            dissolved,
            left,
        } = &mut conv.kind
        {
            if let Some(info) = &g.group {
                *name = info.name.clone();
                *member_count = info.member_count;
                *dissolved |= info.dissolved;
                if conv.activity_ms == 0 {
                    conv.activity_ms = info.created_at_ms;
                }
            }
            match kind {
                v1::GroupChangeKind::MembersRemoved | v1::GroupChangeKind::MemberLeft
                    if about_me =>
                {
                    *left = true
                }
                v1::GroupChangeKind::MembersAdded if about_me => *left = false,
                v1::GroupChangeKind::Dissolved => *dissolved = true,
                _ => {}
            }
        }
    }

    // ------------------------------------------------ request outcomes

    fn on_outcome(&mut self, outcome: Outcome, fx: &mut Vec<Effect>) {
        match outcome {
            Outcome::Conversations(result) => {
                self.conversations_loading = false;
                match result {
                    Ok(list) => self.apply_list(list),
                    Err(e) => self.notify(format!("listing conversations: {e}"), true),
                }
            }
            Outcome::History {
                target,
                before,
                result,
            } => self.apply_history(target, before, result, fx),
            Outcome::Sent {
                conversation_id,
                client_msg_id,
                result,
            } => self.apply_sent(&conversation_id, &client_msg_id, result),
            Outcome::MarkedRead {
                conversation_id,
                result,
            } => match result {
                Ok(r) => {
                    let me = self.me.user_id;
                    let conv = self.conversation_mut(&conversation_id);
                    conv.read_to(r.read_up_to, me);
                    conv.unread = r.unread_count;
                }
                Err(e) => self.notify(format!("marking read: {e}"), true),
            },
            Outcome::GroupCreated(result) => match result {
                Ok(info) => {
                    let conv = self.conversation_mut(&info.conversation_id);
                    conv.kind = ConversationKind::Group {
                        name: info.name.clone(),
                        member_count: info.member_count,
                        dissolved: false,
                        left: false,
                    };
                    conv.activity_ms = conv.activity_ms.max(info.created_at_ms);
                    conv.history_loaded = true;
                    self.reorder();
                    self.select(&info.conversation_id, fx);
                    self.notify(format!("created the group {}", info.name), false);
                }
                Err(e) => self.notify(format!("creating the group: {e}"), true),
            },
        }
    }

    /// Folds in the server's list: names, groups, and counts unless events
    /// already told us of newer messages than the list knew.
    fn apply_list(&mut self, list: Vec<v1::ConversationSummary>) {
        for s in list {
            let conv = self.conversation_mut(&s.conversation_id);
            match (&mut conv.kind, &s.group) {
                (ConversationKind::Group { .. }, Some(info)) => {
                    conv.kind = ConversationKind::Group {
                        name: info.name.clone(),
                        member_count: info.member_count,
                        dissolved: info.dissolved,
                        left: s.my_role() == v1::GroupRole::None,
                    };
                    conv.activity_ms = conv.activity_ms.max(info.created_at_ms);
                }
                (ConversationKind::Direct { peer_username, .. }, None)
                    if !s.peer_username.is_empty() =>
                {
                    *peer_username = s.peer_username.clone();
                }
                _ => {}
            }
            let last_seq = s.last_message.as_ref().map_or(0, |m| m.conv_seq);
            if last_seq >= conv.newest_seq {
                conv.unread = s.unread_count;
                conv.read_up_to = conv.read_up_to.max(s.read_up_to);
            }
            if let Some(m) = &s.last_message {
                conv.note_newest(&Message::from_wire(m));
            }
        }
        self.reorder();
    }

    fn apply_history(
        &mut self,
        target: HistoryTarget,
        before: u64,
        result: Result<v1::HistoryResponse, String>,
        fx: &mut Vec<Effect>,
    ) {
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                if let HistoryTarget::Conversation(id) = &target
                    && let Some(conv) = self.conversations.get_mut(id)
                {
                    conv.history_loading = false;
                }
                let whose = match &target {
                    HistoryTarget::User(u) => u.clone(),
                    HistoryTarget::Conversation(id) => id.clone(),
                };
                self.notify(format!("loading {whose}: {e}"), true);
                return;
            }
        };
        let conv = self.conversation_mut(&page.conversation_id);
        if let (HistoryTarget::User(user), ConversationKind::Direct { peer_username, .. }) =
            (&target, &mut conv.kind)
        {
            *peer_username = user.clone();
        }
        let oldest_before = conv.messages.keys().next().copied();
        let reaches_older = before != 0 || !conv.history_loaded;
        conv.history_loading = false;
        conv.history_loaded = true;
        if reaches_older
            || page.messages.last().map(|m| m.conv_seq) < oldest_before
            || oldest_before.is_none()
        {
            conv.has_older = page.has_more;
        }
        for m in &page.messages {
            let msg = Message::from_wire(m);
            conv.note_newest(&msg);
            conv.insert(msg);
        }
        self.reorder();
        if let HistoryTarget::User(user) = target
            && self.opening.as_deref() == Some(user.as_str())
        {
            self.opening = None;
            let id = page.conversation_id.clone();
            self.select(&id, fx);
        } else if self.selected.as_deref() == Some(page.conversation_id.as_str()) {
            self.mark_read_in_view(fx);
        }
    }

    fn apply_sent(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        result: Result<v1::SendResponse, String>,
    ) {
        let me = self.me.clone();
        let conv = self.conversation_mut(conversation_id);
        let Some(at) = conv
            .pending
            .iter()
            .position(|p| p.client_msg_id == client_msg_id)
        else {
            // The message came back as an event first.
            return;
        };
        match result {
            Ok(ack) => {
                let pending = conv.pending.remove(at);
                let msg = Message {
                    conv_seq: ack.conv_seq,
                    sender_id: me.user_id,
                    sender: me.username,
                    sent_at_ms: ack.sent_at_ms,
                    text: pending.text,
                    recalled: false,
                    edited_at_ms: 0,
                };
                if conv.note_newest(&msg) {
                    conv.read_up_to = conv.read_up_to.max(ack.conv_seq);
                    conv.unread = 0;
                }
                conv.insert(msg);
                self.reorder();
            }
            Err(e) => {
                conv.pending[at].failed = Some(e.clone());
                self.notify(format!("not sent: {e}"), true);
            }
        }
    }
}

/// The commands, for `/help` and mistakes.
pub const HELP: &str = "commands: /new USER, /group NAME USER,USER, /quit; Tab/arrows switch, PgUp/PgDn scroll, Esc quits";

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;

    fn app() -> App {
        let mut n = 0;
        let ids: IdSource = Box::new(move || {
            n += 1;
            format!("id-{n}")
        });
        App::new(
            Me {
                user_id: ME,
                username: "alice".into(),
            },
            "tcp://test:1",
            ids,
            0,
        )
    }

    fn key(code: KeyCode) -> Input {
        Input::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn ctrl(c: char) -> Input {
        Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    fn type_str(app: &mut App, s: &str, now: i64) -> Vec<Effect> {
        s.chars()
            .flat_map(|c| app.update(key(KeyCode::Char(c)), now))
            .collect()
    }

    pub(crate) fn wire(conv: &str, seq: u64, from: (u64, &str), text: &str) -> v1::Message {
        v1::Message {
            conversation_id: conv.into(),
            conv_seq: seq,
            sender_id: from.0,
            sender_username: from.1.into(),
            client_msg_id: format!("c{seq}"),
            sent_at_ms: 1000 * seq as i64,
            content: Some(pigeon_client::text(text)),
            ..Default::default()
        }
    }

    fn events(kinds: Vec<Kind>) -> Input {
        Input::Client(ClientEvent::Events {
            events: kinds
                .into_iter()
                .map(|k| v1::Event {
                    kind: Some(k),
                    ..Default::default()
                })
                .collect(),
            key: b"k".to_vec(),
        })
    }

    /// Checks messages from others count as unread outside the view (with a
    /// notice), that selecting the conversation loads its history and marks
    /// it read, that messages arriving in view are marked read at once, and
    /// that the key is persisted after each batch.
    #[test]
    fn unread_counts_and_marking_read() {
        let mut app = app();
        let bob = (2, "bob");
        let fx = app.update(
            events(vec![
                Kind::Message(wire("d:1:2", 1, bob, "hi")),
                Kind::Message(wire("d:1:2", 2, bob, "there")),
            ]),
            10,
        );
        assert_eq!(fx, vec![Effect::PersistKey(b"k".to_vec())]);
        let conv = app.conversation("d:1:2").unwrap();
        assert_eq!((conv.unread, conv.title().as_str()), (2, "bob"));
        assert_eq!(conv.preview, "bob: there");
        assert_eq!(app.notice().unwrap().text, "new message from bob");
        // The same batch again (a replay) changes nothing.
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 2, bob, "there"))]),
            11,
        );
        assert_eq!(app.conversation("d:1:2").unwrap().unread, 2);

        let fx = app.update(key(KeyCode::Tab), 12);
        assert_eq!(
            fx,
            vec![
                Effect::LoadHistory {
                    target: HistoryTarget::Conversation("d:1:2".into()),
                    before: 0
                },
                Effect::MarkRead {
                    conversation_id: "d:1:2".into(),
                    up_to: 2
                }
            ]
        );
        assert_eq!(app.selected().unwrap().unread, 0);
        let fx = app.update(
            events(vec![Kind::Message(wire("d:1:2", 3, bob, "in view"))]),
            13,
        );
        assert!(fx.contains(&Effect::MarkRead {
            conversation_id: "d:1:2".into(),
            up_to: 3
        }));
        assert_eq!(app.selected().unwrap().unread, 0);
    }

    /// Checks a sent message is pending until acknowledged, that its event
    /// coming back replaces it (no duplicate), and that receipts turn its
    /// mark from stored to delivered to read.
    #[test]
    fn sending_and_marks() {
        let mut app = app();
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 1, (2, "bob"), "hi"))]),
            1,
        );
        app.update(key(KeyCode::Tab), 2);
        let fx = type_str(&mut app, "yo", 3);
        assert_eq!(
            fx,
            vec![Effect::SetTyping {
                conversation_id: "d:1:2".into(),
                typing: true
            }],
            "typing is announced once per interval"
        );
        let fx = app.update(key(KeyCode::Enter), 4);
        assert_eq!(
            fx,
            vec![
                Effect::SetTyping {
                    conversation_id: "d:1:2".into(),
                    typing: false
                },
                Effect::Send {
                    conversation_id: "d:1:2".into(),
                    client_msg_id: "id-1".into(),
                    text: "yo".into()
                }
            ]
        );
        assert_eq!(app.input(), "");
        assert_eq!(app.selected().unwrap().pending.len(), 1);
        let mut own = wire("d:1:2", 2, (ME, "alice"), "yo");
        own.client_msg_id = "id-1".into();
        app.update(events(vec![Kind::Message(own)]), 5);
        let conv = app.selected().unwrap();
        assert!(conv.pending.is_empty());
        assert_eq!(conv.messages.len(), 2);
        assert_eq!(conv.mark(2), "✓");
        // The ack after the event finds nothing pending: no duplicate.
        app.update(
            Input::Done(Outcome::Sent {
                conversation_id: "d:1:2".into(),
                client_msg_id: "id-1".into(),
                result: Ok(v1::SendResponse {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 2,
                    ..Default::default()
                }),
            }),
            6,
        );
        assert_eq!(app.selected().unwrap().messages.len(), 2);
        let receipt = |kind: v1::ReceiptKind, up_to| {
            Kind::Receipt(v1::Receipt {
                conversation_id: "d:1:2".into(),
                user_id: 2,
                username: "bob".into(),
                kind: kind as i32,
                up_to,
            })
        };
        app.update(events(vec![receipt(v1::ReceiptKind::Delivered, 2)]), 7);
        assert_eq!(app.selected().unwrap().mark(2), "✓✓");
        app.update(events(vec![receipt(v1::ReceiptKind::Read, 2)]), 8);
        assert_eq!(app.selected().unwrap().mark(2), "✓✓ read");
    }

    /// Checks receipts are stored (before the key) when they change, not
    /// when a batch repeats them, and that a new App given the stored ones
    /// shows the marks once the conversation appears, also across a resync.
    #[test]
    fn receipts_survive_a_restart() {
        let mut app = app();
        let own = Kind::Message(wire("d:1:2", 1, (ME, "alice"), "hi"));
        let read = || {
            Kind::Receipt(v1::Receipt {
                conversation_id: "d:1:2".into(),
                user_id: 2,
                username: "bob".into(),
                kind: v1::ReceiptKind::Read as i32,
                up_to: 1,
            })
        };
        let fx = app.update(events(vec![own, read()]), 1);
        let stored = vec![StoredReceipt {
            conversation_id: "d:1:2".into(),
            user_id: 2,
            delivered: 1,
            read: 1,
        }];
        assert_eq!(
            fx,
            vec![
                Effect::PersistReceipts(stored.clone()),
                // Bob's name is not known from alice's own message alone.
                Effect::LoadConversations,
                Effect::PersistKey(b"k".to_vec())
            ]
        );
        assert_eq!(
            app.update(events(vec![read()]), 2),
            vec![Effect::PersistKey(b"k".to_vec())]
        );

        let mut again = self::app();
        again.restore_receipts(stored.clone());
        assert_eq!(
            again.receipts_to_store(),
            stored,
            "kept until the conversation appears"
        );
        again.update(Input::Client(ClientEvent::ResyncRequired), 3);
        again.update(
            Input::Done(Outcome::History {
                target: HistoryTarget::Conversation("d:1:2".into()),
                before: 0,
                result: Ok(v1::HistoryResponse {
                    conversation_id: "d:1:2".into(),
                    messages: vec![wire("d:1:2", 1, (ME, "alice"), "hi")],
                    has_more: false,
                }),
            }),
            4,
        );
        assert_eq!(again.conversation("d:1:2").unwrap().mark(1), "✓✓ read");
        again.update(Input::Client(ClientEvent::ResyncRequired), 5);
        assert_eq!(again.receipts_to_store(), stored, "kept over a resync");
    }

    /// Checks a failed send stays visible with its error, and an ack before
    /// the event turns the pending message into a stored one.
    #[test]
    fn acks_and_failures() {
        let mut app = app();
        app.update(
            events(vec![Kind::Message(wire("g:7", 1, (3, "olga"), "hey"))]),
            1,
        );
        app.update(key(KeyCode::Down), 2);
        type_str(&mut app, "one", 3);
        app.update(key(KeyCode::Enter), 3);
        type_str(&mut app, "two", 4);
        app.update(key(KeyCode::Enter), 4);
        let sent = |id: &str, result| {
            Input::Done(Outcome::Sent {
                conversation_id: "g:7".into(),
                client_msg_id: id.into(),
                result,
            })
        };
        let ack = v1::SendResponse {
            conversation_id: "g:7".into(),
            conv_seq: 2,
            sent_at_ms: 5,
            duplicate: false,
        };
        app.update(sent("id-1", Ok(ack)), 5);
        app.update(
            sent("id-2", Err("forbidden (code FORBIDDEN 306)".into())),
            6,
        );
        let conv = app.selected().unwrap();
        assert_eq!(conv.messages[&2].text, "one");
        assert_eq!(conv.messages[&2].sender, "alice");
        assert_eq!(conv.pending.len(), 1);
        assert!(
            conv.pending[0]
                .failed
                .as_ref()
                .unwrap()
                .contains("FORBIDDEN")
        );
        assert!(app.notice().unwrap().error);
    }

    /// Checks the list is sorted by activity and the selection follows its
    /// conversation, not its position; Up and BackTab go back, wrapping.
    #[test]
    fn ordering_and_selection() {
        let mut app = app();
        app.update(
            events(vec![
                Kind::Message(wire("d:1:2", 1, (2, "bob"), "old")),
                Kind::Message(wire("d:1:3", 2, (3, "carol"), "new")),
            ]),
            1,
        );
        let titles = |app: &App| app.conversations().map(|c| c.title()).collect::<Vec<_>>();
        assert_eq!(titles(&app), ["carol", "bob"]);
        app.update(key(KeyCode::Up), 2);
        assert_eq!(app.selected().unwrap().title(), "bob");
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 5, (2, "bob"), "newest"))]),
            3,
        );
        assert_eq!(titles(&app), ["bob", "carol"]);
        assert_eq!(app.selected().unwrap().title(), "bob");
        app.update(key(KeyCode::BackTab), 4);
        assert_eq!(app.selected().unwrap().title(), "carol");
        app.update(key(KeyCode::Tab), 4);
        assert_eq!(app.selected().unwrap().title(), "bob");
    }

    /// Checks `/new`, `/group` and Ctrl-N produce the right requests, and a
    /// history answer for `/new` selects the conversation it names.
    #[test]
    fn commands() {
        let mut app = app();
        app.update(ctrl('n'), 1);
        assert_eq!(app.input(), "/new ");
        let fx = type_str(&mut app, "bob", 1);
        assert!(fx.is_empty(), "commands are not typing");
        let fx = app.update(key(KeyCode::Enter), 2);
        assert_eq!(
            fx,
            vec![Effect::LoadHistory {
                target: HistoryTarget::User("bob".into()),
                before: 0
            }]
        );
        let fx = app.update(
            Input::Done(Outcome::History {
                target: HistoryTarget::User("bob".into()),
                before: 0,
                result: Ok(v1::HistoryResponse {
                    conversation_id: "d:1:2".into(),
                    messages: vec![],
                    has_more: false,
                }),
            }),
            3,
        );
        assert!(fx.is_empty(), "{fx:?}");
        assert_eq!(app.selected().unwrap().title(), "bob");
        assert!(app.selected().unwrap().history_loaded);

        type_str(&mut app, "/group book club bob,carol", 4);
        let fx = app.update(key(KeyCode::Enter), 4);
        assert_eq!(
            fx,
            vec![Effect::CreateGroup {
                name: "book club".into(),
                members: vec!["bob".into(), "carol".into()]
            }]
        );
        type_str(&mut app, "/frobnicate", 5);
        assert!(app.update(key(KeyCode::Enter), 5).is_empty());
        assert_eq!(app.input(), "/frobnicate", "kept to fix");
        assert!(app.notice().unwrap().error);
        assert_eq!(app.update(key(KeyCode::Esc), 6), vec![Effect::Quit]);
    }

    /// Checks typing: announced at most every TYPING_REPEAT_MS, withdrawn
    /// after TYPING_IDLE_MS without keys; others' typing shows until it
    /// stops, expires, or their message arrives.
    #[test]
    fn typing_both_ways() {
        let mut app = app();
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 1, (2, "bob"), "hi"))]),
            0,
        );
        app.update(key(KeyCode::Tab), 0);
        assert_eq!(type_str(&mut app, "a", 0).len(), 1);
        assert!(type_str(&mut app, "b", TYPING_REPEAT_MS - 1).is_empty());
        assert_eq!(type_str(&mut app, "c", TYPING_REPEAT_MS).len(), 1);
        assert!(app.update(Input::Tick, TYPING_REPEAT_MS + 1).is_empty());
        let fx = app.update(Input::Tick, TYPING_REPEAT_MS + TYPING_IDLE_MS);
        assert_eq!(
            fx,
            vec![Effect::SetTyping {
                conversation_id: "d:1:2".into(),
                typing: false
            }]
        );

        let typing = |on| {
            Input::Client(ClientEvent::Typing(v1::TypingPush {
                conversation_id: "d:1:2".into(),
                user_id: 2,
                username: "bob".into(),
                typing: on,
            }))
        };
        app.update(typing(true), 100_000);
        assert_eq!(app.selected().unwrap().typing_now(100_001), ["bob"]);
        assert!(
            app.selected()
                .unwrap()
                .typing_now(100_000 + TYPING_SHOW_MS)
                .is_empty()
        );
        app.update(typing(false), 100_001);
        assert!(app.selected().unwrap().typing_now(100_002).is_empty());
        app.update(typing(true), 100_003);
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 2, (2, "bob"), "done"))]),
            100_004,
        );
        assert!(app.selected().unwrap().typing_now(100_005).is_empty());
    }

    /// Checks recalls and edits apply in any order against history pages
    /// (the newest state wins), and deletes remove the message.
    #[test]
    fn recall_edit_delete_merge() {
        let mut app = app();
        let mut edited = wire("d:1:2", 1, (2, "bob"), "second version");
        edited.edited_at_ms = 50;
        app.update(
            Input::Done(Outcome::History {
                target: HistoryTarget::Conversation("d:1:2".into()),
                before: 0,
                result: Ok(v1::HistoryResponse {
                    conversation_id: "d:1:2".into(),
                    messages: vec![wire("d:1:2", 2, (2, "bob"), "x"), edited],
                    has_more: true,
                }),
            }),
            1,
        );
        // A replayed message event and an older edit do not undo the newer state.
        app.update(
            events(vec![
                Kind::Message(wire("d:1:2", 1, (2, "bob"), "first version")),
                Kind::MessageEdited(v1::MessageEdited {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 1,
                    content: Some(pigeon_client::text("older edit")),
                    edited_at_ms: 40,
                }),
                Kind::MessageRecalled(v1::MessageRecalled {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 2,
                    ..Default::default()
                }),
            ]),
            2,
        );
        let conv = app.conversation("d:1:2").unwrap();
        assert_eq!(conv.messages[&1].text, "second version");
        assert!(conv.messages[&2].recalled);
        assert_eq!(conv.preview, "bob: (recalled)");
        assert!(conv.has_older);
        app.update(
            events(vec![Kind::MessageDeleted(v1::MessageDeleted {
                conversation_id: "d:1:2".into(),
                conv_seq: 1,
            })]),
            3,
        );
        assert_eq!(app.conversation("d:1:2").unwrap().messages.len(), 1);
    }

    /// Checks the server's list supplies names and counts, but does not
    /// overwrite a count that events made newer than the list.
    #[test]
    fn list_merges_with_events() {
        let mut app = app();
        let summary = |id: &str, last: u64, unread| v1::ConversationSummary {
            conversation_id: id.into(),
            peer_user_id: 2,
            peer_username: "bob".into(),
            last_message: Some(wire(id, last, (2, "bob"), "m")),
            unread_count: unread,
            ..Default::default()
        };
        let fx = app.update(
            Input::Client(ClientEvent::Connected {
                welcome: v1::Welcome::default(),
            }),
            1,
        );
        assert_eq!(fx, vec![Effect::LoadConversations]);
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 8, (2, "bob"), "m"))]),
            2,
        );
        app.update(
            Input::Done(Outcome::Conversations(Ok(vec![summary("d:1:2", 7, 5)]))),
            3,
        );
        assert_eq!(app.conversation("d:1:2").unwrap().unread, 1, "events won");
        app.update(
            Input::Done(Outcome::Conversations(Ok(vec![
                summary("d:1:2", 8, 6),
                v1::ConversationSummary {
                    conversation_id: "g:4".into(),
                    group: Some(v1::GroupInfo {
                        conversation_id: "g:4".into(),
                        name: "crew".into(),
                        member_count: 3,
                        created_at_ms: 1,
                        ..Default::default()
                    }),
                    my_role: v1::GroupRole::Member as i32,
                    ..Default::default()
                },
            ]))),
            4,
        );
        assert_eq!(app.conversation("d:1:2").unwrap().unread, 6, "list won");
        assert_eq!(app.conversation("g:4").unwrap().title(), "crew");
    }

    /// Checks PgUp scrolls back and asks for the older page once the loaded
    /// messages run out, and PgDn comes back.
    #[test]
    fn paging_history() {
        let mut app = app();
        app.update(
            Input::Resize {
                width: 80,
                height: 14,
            },
            0,
        );
        let page: Vec<_> = (11..=20)
            .rev()
            .map(|s| wire("d:1:2", s, (2, "bob"), "m"))
            .collect();
        app.update(
            events(vec![Kind::Message(wire("d:1:2", 20, (2, "bob"), "m"))]),
            0,
        );
        app.update(key(KeyCode::Tab), 1);
        app.update(
            Input::Done(Outcome::History {
                target: HistoryTarget::Conversation("d:1:2".into()),
                before: 0,
                result: Ok(v1::HistoryResponse {
                    conversation_id: "d:1:2".into(),
                    messages: page,
                    has_more: true,
                }),
            }),
            2,
        );
        assert!(app.update(key(KeyCode::PageUp), 3).is_empty());
        assert_eq!(app.selected().unwrap().scroll, 4);
        let fx = app.update(key(KeyCode::PageUp), 3);
        assert_eq!(
            fx,
            vec![Effect::LoadHistory {
                target: HistoryTarget::Conversation("d:1:2".into()),
                before: 11
            }]
        );
        assert!(
            app.update(key(KeyCode::PageUp), 3).is_empty(),
            "one at a time"
        );
        app.update(key(KeyCode::PageDown), 4);
        app.update(key(KeyCode::PageDown), 4);
        app.update(key(KeyCode::PageDown), 4);
        assert_eq!(app.selected().unwrap().scroll, 0);
    }
}
