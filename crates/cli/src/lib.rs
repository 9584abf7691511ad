//! Pigeon's terminal client commands (`pigeon register`, `login`, `send`,
//! `sync`, `listen`, ...) over the Rust SDK, as a library the `pigeon`
//! binary mounts. Output is JSON lines on stdout (see [`format`](mod@format)); notes
//! go to stderr.
//!
//! Layout:
//! - `lib.rs`: the clap arguments and [`run`].
//! - `commands.rs`: one function per command.
//! - [`format`](mod@format): the JSON line shapes, pure functions.
//! - [`profile`]: the profile directory (login state and sync key on disk).
//!
//! Errors come back as `anyhow::Error`; print them with [`error_line`]:
//! `error: <message> (code <NAME> <number>)` for server errors.

mod commands;
pub mod format;
pub mod profile;

use std::path::PathBuf;

/// Where the server is and where the CLI keeps its state.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server URL: tcp://host:port or ws://host:port/ws.
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
    /// Send a text message to a user; prints the acknowledgement.
    Send {
        /// The recipient's username.
        user: String,
        /// The message text.
        text: String,
    },
    /// Print the events since the last sync as JSON lines, then store the new sync key.
    Sync,
    /// Stay connected and print events as JSON lines as they arrive (Ctrl-C to stop).
    Listen,
    /// Print a page of the conversation with a user, oldest first.
    History {
        /// The other participant's username.
        user: String,
        /// Only messages with conv_seq below this (0: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
        /// At most this many messages.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List conversations, most recently active first.
    Conversations {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
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
            matches!(cli.cmd, ClientCommand::Send { ref user, ref text } if user == "bob" && text == "hello there")
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
        assert!(matches!(
            cli.cmd,
            ClientCommand::History {
                before: 0,
                limit: 5,
                ..
            }
        ));
        let cli = Cli::parse_from(["pigeon", "login", "alice"]);
        assert!(matches!(cli.cmd, ClientCommand::Login { ref device, .. } if device == "cli"));
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
