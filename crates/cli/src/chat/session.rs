//! Runs an [`App`] against the SDK: starts the reconnecting [`Client`] from
//! the profile (its token and stored sync key), turns [`Effect`]s into
//! requests whose answers come back as [`Input::Done`], persists the sync
//! key after each applied batch, and merges the client's events with those
//! answers. The terminal loop and the end-to-end test drive the same
//! [`Chat`]; only the terminal loop adds keys, ticks and drawing.

use pigeon_client::{Client, ClientEvent, ClientOptions};
use tokio::sync::mpsc;

use super::app::{
    App, Effect, HISTORY_PAGE_MESSAGES, HistoryTarget, Input, Me, Outcome, StoredReceipt,
};
use crate::ClientArgs;
use crate::commands::{Remote, connect_options};
use crate::profile::ProfileDir;

/// Answers to the chat's requests waiting to be applied.
const OUTCOMES_QUEUE_MAX: usize = 256;
/// Conversations asked for (0: the server's maximum, 500).
const CONVERSATIONS_LIST_LIMIT: u32 = 0;

/// A chat session: the [`App`], the SDK client and the profile on disk.
pub struct Chat {
    app: App,
    client: Client,
    events: mpsc::Receiver<ClientEvent>,
    events_open: bool,
    outcomes_tx: mpsc::Sender<Outcome>,
    outcomes: mpsc::Receiver<Outcome>,
    dir: ProfileDir,
    resumed_from: Vec<u8>,
    keys_persisted: u64,
    quit: bool,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// Starts a session for the profile logged in at `args.profile` against
    /// `args.server` (trusting `args.ca` as the other commands do), resuming
    /// from the stored sync key. Needs a Tokio runtime; connects in the
    /// background.
    pub fn start(args: &ClientArgs) -> anyhow::Result<Chat> {
        let remote = Remote::from_args(args)?;
        let dir = ProfileDir::resolve(args.profile.as_deref());
        let (profile, token) = dir.load_logged_in()?;
        let key = dir.load_sync_key()?;
        let receipts = load_chat_state(&dir)?.receipts;
        let opts =
            ClientOptions::new(connect_options(&remote, Some(&token))).with_sync_key(key.clone());
        let (client, events) = Client::start(opts);
        let me = Me {
            user_id: profile.user_id,
            username: profile.username,
        };
        let offset = chrono::Local::now().offset().local_minus_utc();
        let mut app = App::new(
            me,
            &args.server,
            Box::new(pigeon_client::new_client_msg_id),
            offset,
        );
        app.restore_receipts(receipts);
        let (outcomes_tx, outcomes) = mpsc::channel(OUTCOMES_QUEUE_MAX);
        Ok(Chat {
            app,
            client,
            events,
            events_open: true,
            outcomes_tx,
            outcomes,
            dir,
            resumed_from: key,
            keys_persisted: 0,
            quit: false,
        })
    }

    /// The state, to draw or inspect.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The sync key the session started from (empty: from the beginning).
    pub fn resumed_from(&self) -> &[u8] {
        &self.resumed_from
    }

    /// How many sync keys this session stored.
    pub fn keys_persisted(&self) -> u64 {
        self.keys_persisted
    }

    /// Whether the user asked to leave.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Waits for the next SDK event or request answer.
    pub async fn next(&mut self) -> Input {
        loop {
            tokio::select! {
                Some(outcome) = self.outcomes.recv() => return Input::Done(outcome),
                event = self.events.recv(), if self.events_open => match event {
                    Some(event) => return Input::Client(event),
                    // The client stopped; answers may still come.
                    None => self.events_open = false,
                },
            }
        }
    }

    /// The next SDK event or answer that is already waiting, if any.
    pub fn try_next(&mut self) -> Option<Input> {
        if let Ok(outcome) = self.outcomes.try_recv() {
            return Some(Input::Done(outcome));
        }
        self.events.try_recv().ok().map(Input::Client)
    }

    /// Applies `input` now and carries out its effects. Fails only when the
    /// sync key cannot be stored.
    pub fn handle(&mut self, input: Input) -> anyhow::Result<()> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for effect in self.app.update(input, now_ms) {
            self.carry_out(effect)?;
        }
        Ok(())
    }

    fn carry_out(&mut self, effect: Effect) -> anyhow::Result<()> {
        match effect {
            Effect::PersistReceipts(receipts) => {
                let state = ChatState { receipts };
                self.dir.save_chat_state(&serde_json::to_vec(&state)?)?;
            }
            Effect::PersistKey(key) => {
                self.dir.save_sync_key(&key)?;
                self.keys_persisted += 1;
            }
            Effect::Quit => self.quit = true,
            effect => {
                let client = self.client.clone();
                let outcomes = self.outcomes_tx.clone();
                tokio::spawn(async move {
                    if let Some(outcome) = request(&client, effect).await {
                        // The chat may have ended meanwhile: nobody to tell.
                        let _ = outcomes.send(outcome).await;
                    }
                });
            }
        }
        Ok(())
    }

    /// Stops the client. The key stored is the one after the last applied
    /// batch: events still queued were not applied, so they come again.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
    }
}

/// `chat_state.json` in the profile: what the chat derived from events
/// before the stored key and the server cannot tell again.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ChatState {
    receipts: Vec<StoredReceipt>,
}

fn load_chat_state(dir: &ProfileDir) -> anyhow::Result<ChatState> {
    let Some(bytes) = dir.load_chat_state()? else {
        return Ok(ChatState::default());
    };
    // Only marks on one's own messages depend on it, and later receipts
    // raise them again: an unreadable file is not worth refusing to start.
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Makes the request of one effect; the answer, if the app wants one.
async fn request(client: &Client, effect: Effect) -> Option<Outcome> {
    let text = |e: pigeon_client::ClientError| e.to_string();
    let outcome = match effect {
        Effect::LoadConversations => Outcome::Conversations(
            client
                .list_conversations(CONVERSATIONS_LIST_LIMIT)
                .await
                .map(|r| r.conversations)
                .map_err(text),
        ),
        Effect::LoadHistory { target, before } => {
            let wire_target = match &target {
                HistoryTarget::Conversation(id) => pigeon_client::to_conversation(id),
                HistoryTarget::User(user) => pigeon_client::to_user(user),
            };
            let result = client
                .history(wire_target, before, HISTORY_PAGE_MESSAGES)
                .await
                .map_err(text);
            Outcome::History {
                target,
                before,
                result,
            }
        }
        Effect::Send {
            conversation_id,
            client_msg_id,
            text: body,
        } => {
            let result = client
                .send_with_id(
                    &client_msg_id,
                    pigeon_client::to_conversation(&conversation_id),
                    pigeon_client::text(&body),
                )
                .await
                .map_err(text);
            Outcome::Sent {
                conversation_id,
                client_msg_id,
                result,
            }
        }
        Effect::MarkRead {
            conversation_id,
            up_to,
        } => {
            let result = client
                .mark_read(&conversation_id, up_to)
                .await
                .map_err(text);
            Outcome::MarkedRead {
                conversation_id,
                result,
            }
        }
        Effect::SetTyping {
            conversation_id,
            typing,
        } => {
            // A lost typing indicator is not worth a word to the user.
            let _ = client.set_typing(&conversation_id, typing).await;
            return None;
        }
        Effect::CreateGroup { name, members } => {
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            Outcome::GroupCreated(
                client
                    .create_group(&name, "", &members, None)
                    .await
                    .map_err(text),
            )
        }
        Effect::PersistReceipts(_) | Effect::PersistKey(_) | Effect::Quit => return None,
    };
    Some(outcome)
}
