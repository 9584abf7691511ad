//! Pigeon's terminal client commands (`pigeon register`, `login`, `send`,
//! `sync`, `listen`, ...) over the Rust SDK, as a library the `pigeon`
//! binary mounts. Output is JSON lines on stdout (see [`format`](mod@format)); notes
//! go to stderr. `pigeon chat` is the exception: a full-screen chat.
//!
//! Layout:
//! - `lib.rs`: the clap arguments and [`run`].
//! - `commands.rs`: one function per command.
//! - [`chat`]: `pigeon chat`, the terminal chat (ratatui).
//! - [`format`](mod@format): the JSON line shapes, pure functions.
//! - [`profile`]: the profile directory (login state and sync key on disk).
//!
//! Errors come back as `anyhow::Error`; print them with [`error_line`]:
//! `error: <message> (code <NAME> <number>)` for server errors.

pub mod chat;
mod commands;
pub mod format;
pub mod profile;

use std::path::PathBuf;

/// Where the server is and where the CLI keeps its state.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server URL: tcp://host:port or ws://host:port/ws, or over TLS
    /// tls://host:port or wss://host:port/ws.
    #[arg(
        long,
        env = "PIGEON_SERVER",
        default_value = "tcp://127.0.0.1:7700",
        global = true
    )]
    pub server: String,
    /// Profile directory holding the login and the sync key [default: $HOME/.pigeon].
    #[arg(long, env = "PIGEON_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for tls:// and wss://, besides
    /// the built-in web roots (for a server with a private CA).
    #[arg(long, env = "PIGEON_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
}

/// The client commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Create an account (password from PIGEON_PASSWORD, else read from the terminal).
    Register {
        /// 3 to 32 of a-z 0-9 _ . - (starting with a letter or digit).
        username: String,
    },
    /// Log in as a new device and store the session in the profile.
    Login {
        username: String,
        /// A name for this device.
        #[arg(long, default_value = "cli")]
        device: String,
    },
    /// Revoke this device's session and forget its token.
    Logout,
    /// Send a text message: `send USER TEXT`, `send --group ID TEXT` or
    /// `send --conversation ID TEXT`; prints the acknowledgement.
    Send {
        /// USER TEXT, or TEXT alone with --group or --conversation.
        #[arg(value_name = "USER TEXT", num_args = 1..=2, required = true)]
        words: Vec<String>,
        /// Send to this group (g:N) instead of a user.
        #[arg(long, value_name = "ID", conflicts_with = "conversation")]
        group: Option<String>,
        /// Send to this conversation (d:A:B or g:N) instead of a user.
        #[arg(long, value_name = "ID")]
        conversation: Option<String>,
    },
    /// Print the events since the last sync as JSON lines, then store the new sync key.
    Sync,
    /// Stay connected and print events, presence and typing as JSON lines as
    /// they arrive (Ctrl-C or SIGTERM to stop).
    Listen,
    /// Open the terminal chat: conversations, messages and an input line
    /// (resumes from the profile's sync key; Esc or Ctrl-C to quit).
    Chat,
    /// Print a page of a conversation (with a user, or by id), oldest first.
    History {
        /// The other participant's username.
        #[arg(required_unless_present = "conversation")]
        user: Option<String>,
        /// The conversation id instead (d:A:B or g:N).
        #[arg(
            long,
            value_name = "ID",
            visible_alias = "group",
            conflicts_with = "user"
        )]
        conversation: Option<String>,
        /// Only messages with conv_seq below this (0: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
        /// At most this many messages.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Every message instead of one page: pages back to the oldest the
        /// caller may see (kept in memory, then printed oldest first).
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// List conversations, most recently active first.
    Conversations {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Create and manage groups.
    Group {
        #[command(subcommand)]
        cmd: GroupCommand,
    },
    /// Mark a conversation read; prints {"read_up_to","unread_count"}.
    Read {
        conversation_id: String,
        /// Up to and including this conv_seq [default: the last message].
        #[arg(long, value_name = "N")]
        up_to: Option<u64>,
    },
    /// Recall (delete for everyone) one of your messages.
    Recall {
        conversation_id: String,
        conv_seq: u64,
    },
    /// Replace the text of one of your messages.
    Edit {
        conversation_id: String,
        conv_seq: u64,
        /// The new text.
        text: String,
    },
    /// Delete a message from your own history (all your devices).
    Delete {
        conversation_id: String,
        conv_seq: u64,
    },
    /// Print receipt counts for messages of a large group, one line each.
    Receipts {
        conversation_id: String,
        #[arg(required = true)]
        conv_seqs: Vec<u64>,
    },
    /// Tell the conversation you are typing (or, with --stop, that you stopped).
    Typing {
        conversation_id: String,
        #[arg(long)]
        stop: bool,
    },
    /// Print users' presence, one line each.
    Presence {
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Hide or show your presence.
    Privacy {
        /// true: nobody sees whether you are online.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        hide_presence: bool,
    },
    /// Block a user: they can no longer message you or see your presence.
    Block { user: String },
    /// Unblock a user.
    Unblock { user: String },
    /// List the users you have blocked, one line each.
    Blocked,
}

/// `pigeon group ...`. ID is a group conversation id (g:N).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GroupCommand {
    /// Create a group owned by you; prints the group.
    Create {
        /// The group's name.
        name: String,
        /// Usernames to add at once, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "USERS")]
        members: Vec<String>,
        /// What the group is about.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
        /// Only admins and the owner may post.
        #[arg(long)]
        admins_only_post: bool,
        /// Every member may add members (default: admins and the owner).
        #[arg(long)]
        members_can_add: bool,
        /// Member maximum [default: the server's].
        #[arg(long, value_name = "N")]
        max_members: Option<u32>,
    },
    /// Add members; prints the group with "added".
    Add {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members; prints the group with "removed".
    Remove {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group.
    Leave {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Make a member an admin or an admin a member (owner only).
    Role {
        #[arg(value_name = "ID")]
        id: String,
        user: String,
        role: RoleArg,
    },
    /// Hand the group to another member (owner only).
    Transfer {
        #[arg(value_name = "ID")]
        id: String,
        user: String,
    },
    /// End the group for everyone (owner only).
    Dissolve {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Print the group and your role in it.
    Info {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Print members in user id order, one line each.
    Members {
        #[arg(value_name = "ID")]
        id: String,
        /// Start after this user id.
        #[arg(long, value_name = "N", default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Change the group's name.
    Rename {
        #[arg(value_name = "ID")]
        id: String,
        name: String,
    },
    /// Change the group's description.
    Describe {
        #[arg(value_name = "ID")]
        id: String,
        text: String,
    },
    /// Change the group's settings; the ones not given stay as they are.
    Settings {
        #[arg(value_name = "ID")]
        id: String,
        /// Only admins and the owner may post.
        #[arg(long, value_name = "true|false")]
        admins_only_post: Option<bool>,
        /// Every member may add members.
        #[arg(long, value_name = "true|false")]
        members_can_add: Option<bool>,
        /// Member maximum (0: the server's).
        #[arg(long, value_name = "N")]
        max_members: Option<u32>,
    },
}

/// The roles `pigeon group role` can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Member,
}

/// Runs one client command.
pub async fn run(args: ClientArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    commands::run(args, cmd).await
}

/// The line to print on stderr for an error from [`run`], e.g.
/// `error: username taken (code USERNAME_TAKEN 206)`.
pub fn error_line(err: &anyhow::Error) -> String {
    format!("error: {err:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    /// Checks the clap definitions are consistent and parse as documented.
    #[test]
    fn arguments_parse() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "pigeon",
            "send",
            "--server",
            "ws://h:1/ws",
            "bob",
            "hello there",
        ]);
        assert_eq!(cli.args.server, "ws://h:1/ws");
        assert!(
            matches!(cli.cmd, ClientCommand::Send { ref words, group: None, conversation: None } if words == &["bob", "hello there"])
        );
        let cli = Cli::parse_from([
            "pigeon",
            "--profile",
            "/tmp/p",
            "history",
            "bob",
            "--limit",
            "5",
        ]);
        assert_eq!(cli.args.profile, Some(PathBuf::from("/tmp/p")));
        assert_eq!(cli.args.ca, None);
        let with_ca = Cli::parse_from(["pigeon", "sync", "--ca", "/etc/ca.pem"]);
        assert_eq!(with_ca.args.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(matches!(
            cli.cmd,
            ClientCommand::History {
                before: 0,
                limit: 5,
                ..
            }
        ));
        assert!(matches!(
            Cli::parse_from(["pigeon", "chat", "--server", "ws://h:1/ws"]).cmd,
            ClientCommand::Chat
        ));
        let cli = Cli::parse_from(["pigeon", "login", "alice"]);
        assert!(matches!(cli.cmd, ClientCommand::Login { ref device, .. } if device == "cli"));
    }

    fn parse(args: &[&str]) -> ClientCommand {
        Cli::try_parse_from(std::iter::once("pigeon").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    fn refused(args: &[&str]) -> bool {
        Cli::try_parse_from(std::iter::once("pigeon").chain(args.iter().copied())).is_err()
    }

    fn group(args: &[&str]) -> GroupCommand {
        let mut all = vec!["group"];
        all.extend_from_slice(args);
        match parse(&all) {
            ClientCommand::Group { cmd } => cmd,
            other => panic!("{other:?}"),
        }
    }

    /// Checks `send` to a group or a conversation, and `history` by conversation id.
    #[test]
    fn send_and_history_by_conversation() {
        assert!(matches!(
            parse(&["send", "--group", "g:7", "hi all"]),
            ClientCommand::Send { words, group: Some(g), conversation: None }
                if words == ["hi all"] && g == "g:7"
        ));
        assert!(matches!(
            parse(&["send", "hi", "--conversation", "d:1:2"]),
            ClientCommand::Send { words, group: None, conversation: Some(c) }
                if words == ["hi"] && c == "d:1:2"
        ));
        assert!(refused(&["send"]));
        assert!(refused(&["send", "a", "b", "c"]));
        assert!(refused(&[
            "send",
            "--group",
            "g:1",
            "--conversation",
            "d:1:2",
            "x"
        ]));
        assert!(matches!(
            parse(&["history", "--conversation", "g:7", "--limit", "3"]),
            ClientCommand::History { user: None, conversation: Some(c), limit: 3, .. } if c == "g:7"
        ));
        assert!(matches!(
            parse(&["history", "--group", "g:7"]),
            ClientCommand::History { conversation: Some(c), .. } if c == "g:7"
        ));
        assert!(matches!(
            parse(&["history", "bob"]),
            ClientCommand::History { user: Some(u), conversation: None, .. } if u == "bob"
        ));
        assert!(matches!(
            parse(&["history", "bob", "--all"]),
            ClientCommand::History { all: true, .. }
        ));
        assert!(refused(&["history", "bob", "--all", "--limit", "3"]));
        assert!(refused(&["history"]));
        assert!(refused(&["history", "bob", "--conversation", "d:1:2"]));
    }

    /// Checks the `group` subcommands parse as documented.
    #[test]
    fn group_commands_parse() {
        match group(&[
            "create",
            "crew",
            "--members",
            "bob,carol",
            "--admins-only-post",
        ]) {
            GroupCommand::Create {
                name,
                members,
                description,
                admins_only_post: true,
                members_can_add: false,
                max_members: None,
            } => {
                assert_eq!(name, "crew");
                assert_eq!(members, ["bob", "carol"]);
                assert_eq!(description, "");
            }
            other => panic!("{other:?}"),
        }
        match group(&[
            "create",
            "crew",
            "--description",
            "the crew",
            "--members-can-add",
            "--max-members",
            "50",
        ]) {
            GroupCommand::Create {
                members,
                description,
                admins_only_post: false,
                members_can_add: true,
                max_members: Some(50),
                ..
            } => {
                assert!(members.is_empty());
                assert_eq!(description, "the crew");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            group(&["add", "g:1", "bob", "carol"]),
            GroupCommand::Add { id, users } if id == "g:1" && users == ["bob", "carol"]
        ));
        assert!(refused(&["group", "add", "g:1"]));
        assert!(matches!(
            group(&["remove", "g:1", "bob"]),
            GroupCommand::Remove { id, users } if id == "g:1" && users == ["bob"]
        ));
        assert!(matches!(group(&["leave", "g:1"]), GroupCommand::Leave { id } if id == "g:1"));
        assert!(matches!(
            group(&["role", "g:1", "bob", "admin"]),
            GroupCommand::Role { user, role: RoleArg::Admin, .. } if user == "bob"
        ));
        assert!(matches!(
            group(&["role", "g:1", "bob", "member"]),
            GroupCommand::Role {
                role: RoleArg::Member,
                ..
            }
        ));
        assert!(refused(&["group", "role", "g:1", "bob", "owner"]));
        assert!(matches!(
            group(&["transfer", "g:1", "bob"]),
            GroupCommand::Transfer { id, user } if id == "g:1" && user == "bob"
        ));
        assert!(matches!(
            group(&["dissolve", "g:1"]),
            GroupCommand::Dissolve { .. }
        ));
        assert!(matches!(group(&["info", "g:1"]), GroupCommand::Info { .. }));
        assert!(matches!(
            group(&["members", "g:1"]),
            GroupCommand::Members {
                after: 0,
                limit: 100,
                ..
            }
        ));
        assert!(matches!(
            group(&["members", "g:1", "--after", "7", "--limit", "2"]),
            GroupCommand::Members {
                after: 7,
                limit: 2,
                ..
            }
        ));
        assert!(matches!(
            group(&["rename", "g:1", "new name"]),
            GroupCommand::Rename { name, .. } if name == "new name"
        ));
        assert!(matches!(
            group(&["describe", "g:1", "about us"]),
            GroupCommand::Describe { text, .. } if text == "about us"
        ));
        assert!(matches!(
            group(&[
                "settings",
                "g:1",
                "--admins-only-post",
                "false",
                "--max-members",
                "9"
            ]),
            GroupCommand::Settings {
                admins_only_post: Some(false),
                members_can_add: None,
                max_members: Some(9),
                ..
            }
        ));
        assert!(matches!(
            group(&["settings", "g:1", "--members-can-add", "true"]),
            GroupCommand::Settings {
                admins_only_post: None,
                members_can_add: Some(true),
                max_members: None,
                ..
            }
        ));
        assert!(refused(&[
            "group",
            "settings",
            "g:1",
            "--admins-only-post",
            "maybe"
        ]));
        assert!(refused(&["group", "settings", "g:1", "--admins-only-post"]));
    }

    /// Checks the message, receipt, typing, presence, privacy and block commands parse.
    #[test]
    fn other_new_commands_parse() {
        assert!(matches!(
            parse(&["read", "d:1:2"]),
            ClientCommand::Read { conversation_id, up_to: None } if conversation_id == "d:1:2"
        ));
        assert!(matches!(
            parse(&["read", "g:1", "--up-to", "5"]),
            ClientCommand::Read { up_to: Some(5), .. }
        ));
        assert!(matches!(
            parse(&["recall", "g:1", "3"]),
            ClientCommand::Recall { conversation_id, conv_seq: 3 } if conversation_id == "g:1"
        ));
        assert!(refused(&["recall", "g:1", "x"]));
        assert!(matches!(
            parse(&["edit", "g:1", "3", "new text"]),
            ClientCommand::Edit { conv_seq: 3, text, .. } if text == "new text"
        ));
        assert!(matches!(
            parse(&["delete", "d:1:2", "4"]),
            ClientCommand::Delete { conv_seq: 4, .. }
        ));
        assert!(matches!(
            parse(&["receipts", "g:1", "1", "2", "3"]),
            ClientCommand::Receipts { conv_seqs, .. } if conv_seqs == [1, 2, 3]
        ));
        assert!(refused(&["receipts", "g:1"]));
        assert!(matches!(
            parse(&["typing", "d:1:2"]),
            ClientCommand::Typing { stop: false, .. }
        ));
        assert!(matches!(
            parse(&["typing", "d:1:2", "--stop"]),
            ClientCommand::Typing { stop: true, .. }
        ));
        assert!(matches!(
            parse(&["presence", "bob", "carol"]),
            ClientCommand::Presence { users } if users == ["bob", "carol"]
        ));
        assert!(refused(&["presence"]));
        assert!(matches!(
            parse(&["privacy", "--hide-presence", "true"]),
            ClientCommand::Privacy {
                hide_presence: true
            }
        ));
        assert!(matches!(
            parse(&["privacy", "--hide-presence", "false"]),
            ClientCommand::Privacy {
                hide_presence: false
            }
        ));
        assert!(refused(&["privacy"]));
        assert!(refused(&["privacy", "--hide-presence"]));
        assert!(matches!(parse(&["block", "bob"]), ClientCommand::Block { user } if user == "bob"));
        assert!(
            matches!(parse(&["unblock", "bob"]), ClientCommand::Unblock { user } if user == "bob")
        );
        assert!(matches!(parse(&["blocked"]), ClientCommand::Blocked));
    }

    /// Checks the commands mount flattened next to other subcommands, as the
    /// `pigeon` binary does, with the global flags after nested subcommands.
    #[test]
    fn commands_flatten_into_the_binary() {
        #[derive(Debug, Parser)]
        struct Binary {
            #[command(flatten)]
            args: ClientArgs,
            #[command(subcommand)]
            cmd: Command,
        }
        #[derive(Debug, clap::Subcommand)]
        enum Command {
            Serve,
            #[command(flatten)]
            Client(ClientCommand),
        }
        Binary::command().debug_assert();
        let b = Binary::parse_from([
            "pigeon",
            "group",
            "members",
            "g:1",
            "--server",
            "tcp://h:1",
            "--limit",
            "3",
        ]);
        assert_eq!(b.args.server, "tcp://h:1");
        assert!(matches!(
            b.cmd,
            Command::Client(ClientCommand::Group {
                cmd: GroupCommand::Members { limit: 3, .. }
            })
        ));
        let b = Binary::parse_from(["pigeon", "serve"]);
        assert!(matches!(b.cmd, Command::Serve));
    }

    /// Checks a server error prints with its code name and number.
    #[test]
    fn error_line_names_the_code() {
        let err = pigeon_client::ClientError::Server {
            code: pigeon_client::v1::ErrorCode::UsernameTaken,
            message: "username taken".into(),
            retry_after_ms: 0,
        };
        assert_eq!(
            error_line(&err.into()),
            "error: username taken (code USERNAME_TAKEN 206)"
        );
    }
}
