//! `pigeon chat`: a terminal chat client on ratatui and crossterm.
//!
//! Layout:
//! - [`app`]: the state and [`App::update`] (input in, effects out; no I/O).
//! - [`view`]: [`render`](view::render) draws an [`App`] on a ratatui frame.
//! - [`session`]: [`Chat`] runs an [`App`] against the SDK's reconnecting
//!   client and the profile on disk.
//! - this file: the terminal loop, merging key presses, SDK events, request
//!   answers and a clock tick with `tokio::select!`.

pub mod app;
pub mod session;
pub mod view;

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;

pub use app::{App, Effect, Input, Outcome};
/// The key types [`Input::Key`] carries, for callers without crossterm.
pub use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
pub use session::Chat;
pub use view::{render, screen_text};

use crate::ClientArgs;

/// How often the screen is refreshed with nothing happening (typing
/// indicators and notices expire).
const TICK: Duration = Duration::from_millis(1000);
/// Inputs applied together before the screen is drawn again.
const INPUTS_PER_DRAW_MAX: usize = 256;

/// Runs the chat in the terminal until the user quits.
pub(crate) async fn run(args: &ClientArgs) -> anyhow::Result<()> {
    // Fail on a missing login before the screen is taken over.
    let mut chat = Chat::start(args)?;
    let mut terminal = ratatui::try_init()?;
    let result = drive(&mut chat, &mut terminal).await;
    ratatui::restore();
    chat.shutdown().await;
    result
}

async fn drive(chat: &mut Chat, terminal: &mut DefaultTerminal) -> anyhow::Result<()> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    let size = terminal.size()?;
    chat.handle(Input::Resize {
        width: size.width,
        height: size.height,
    })?;
    loop {
        terminal.draw(|frame| view::render(frame, chat.app()))?;
        if chat.should_quit() {
            return Ok(());
        }
        let input = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => Input::Key(k),
                Some(Ok(Event::Resize(width, height))) => Input::Resize { width, height },
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            input = chat.next() => input,
            _ = tick.tick() => Input::Tick,
        };
        chat.handle(input)?;
        // Apply what else is ready before drawing again.
        for _ in 0..INPUTS_PER_DRAW_MAX {
            let Some(input) = chat.try_next() else { break };
            chat.handle(input)?;
        }
    }
}
