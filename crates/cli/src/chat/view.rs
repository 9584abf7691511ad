//! Draws an [`App`] on a ratatui frame: the conversation list on the left,
//! the conversation in view on the right, the input line and the status
//! line below. Pure: it reads the state and the time stored in it, so a
//! `TestBackend` shows exactly what a terminal would.

use chrono::{DateTime, FixedOffset};
use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, HighlightSpacing, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::{Frame, Terminal};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::app::{App, Conversation, ConversationKind, Link, Message};

/// Width of the conversation list, at most (a third of the screen on small ones).
pub const LIST_COLUMNS_MAX: u16 = 30;

/// Draws the whole screen.
pub fn render(frame: &mut Frame, app: &App) {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let list_columns = LIST_COLUMNS_MAX.min(main.width / 3);
    let [list, messages] =
        Layout::horizontal([Constraint::Length(list_columns), Constraint::Min(1)]).areas(main);
    render_list(frame, app, list);
    render_messages(frame, app, messages);
    render_input(frame, app, input);
    render_status(frame, app, status);
}

fn render_list(frame: &mut Frame, app: &App, area: Rect) {
    // Two columns for the highlight symbol, two for the borders.
    let width = usize::from(area.width.saturating_sub(4));
    let items: Vec<ListItem> = app
        .conversations()
        .map(|c| {
            let title = if c.is_group() {
                format!("# {}", c.title())
            } else {
                c.title()
            };
            let badge = if c.unread > 0 {
                format!(" ({})", c.unread)
            } else {
                String::new()
            };
            let title = truncate(&title, width.saturating_sub(badge.width()));
            let pad = width.saturating_sub(title.width() + badge.width());
            let mut first = vec![Span::raw(title), Span::raw(" ".repeat(pad))];
            if c.unread > 0 {
                first[0] = first[0].clone().bold();
                first.push(Span::styled(badge, Style::new().fg(Color::Yellow).bold()));
            }
            let preview = Span::styled(truncate(&c.preview, width), Style::new().dim());
            ListItem::new(vec![Line::from(first), Line::from(preview)])
        })
        .collect();
    let selected = app
        .selected()
        .and_then(|s| app.conversations().position(|c| c.id == s.id));
    let mut state = ListState::default().with_selected(selected);
    let list = List::new(items)
        .block(Block::bordered().title(" Conversations "))
        .highlight_symbol("> ")
        .highlight_spacing(HighlightSpacing::Always)
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, area, &mut state);
}

fn render_messages(frame: &mut Frame, app: &App, area: Rect) {
    let Some(conv) = app.selected() else {
        let help = Paragraph::new(vec![
            Line::from("Tab or ↑/↓: pick a conversation"),
            Line::from("Ctrl-N or /new USER: talk to someone"),
            Line::from("/group NAME USER,USER: create a group"),
            Line::from("PgUp/PgDn: scroll   Esc or Ctrl-C: quit"),
        ])
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(" Pigeon "));
        frame.render_widget(help, area);
        return;
    };
    let block = Block::bordered().title(format!(" {} ", header(conv)));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let typing = conv.typing_now(app.now_ms());
    let typing_rows = usize::from(!typing.is_empty());
    let height = usize::from(inner.height).saturating_sub(typing_rows);

    let shown = conv.messages.len().saturating_sub(conv.scroll);
    // The first row says what lies above; it scrolls out of view with the rest.
    let mut rows: Vec<Line> = Vec::new();
    {
        let top = if conv.has_older {
            "↑ PgUp: older messages"
        } else if conv.history_loaded {
            "start of the conversation"
        } else {
            "loading…"
        };
        rows.push(Line::from(Span::styled(top, Style::new().dim())));
    }
    for m in conv.messages.values().take(shown) {
        rows.extend(wrap(message_spans(app, conv, m), width));
    }
    if conv.scroll == 0 {
        for p in &conv.pending {
            let mut spans = prefix(app, p.at_ms, &app.me().username, true);
            spans.push(Span::raw(p.text.clone()));
            spans.push(match &p.failed {
                None => Span::styled(" …", Style::new().dim()),
                Some(e) => Span::styled(format!(" ✗ not sent: {e}"), Style::new().fg(Color::Red)),
            });
            rows.extend(wrap(spans, width));
        }
    }
    let skip = rows.len().saturating_sub(height);
    let mut lines: Vec<Line> = rows.into_iter().skip(skip).collect();
    if !typing.is_empty() {
        // Keep the indicator on the last row, under the messages.
        while lines.len() < height {
            lines.push(Line::default());
        }
        let verb = if typing.len() == 1 { "is" } else { "are" };
        let who = typing.join(", ");
        lines.push(Line::from(Span::styled(
            format!("{who} {verb} typing…"),
            Style::new().italic().fg(Color::Cyan),
        )));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The title of the message pane.
fn header(conv: &Conversation) -> String {
    match &conv.kind {
        ConversationKind::Direct { .. } => conv.title(),
        ConversationKind::Group {
            member_count,
            dissolved,
            left,
            ..
        } => {
            let mut h = format!("# {}", conv.title());
            if *member_count > 0 {
                h.push_str(&format!(" · {member_count} members"));
            }
            if *dissolved {
                h.push_str(" · dissolved");
            } else if *left {
                h.push_str(" · you left");
            }
            h
        }
    }
}

/// `HH:MM name: `, dimmed time, the name bold (cyan for oneself).
fn prefix(app: &App, at_ms: i64, sender: &str, own: bool) -> Vec<Span<'static>> {
    let name = Style::new().bold();
    let name = if own { name.fg(Color::Cyan) } else { name };
    vec![
        Span::styled(
            clock(at_ms, app.now_ms(), app.utc_offset_secs()),
            Style::new().dim(),
        ),
        Span::raw(" "),
        Span::styled(sender.to_string(), name),
        Span::raw(": "),
    ]
}

fn message_spans(app: &App, conv: &Conversation, m: &Message) -> Vec<Span<'static>> {
    let own = m.sender_id == app.me().user_id;
    let mut spans = prefix(app, m.sent_at_ms, &m.sender, own);
    if m.recalled {
        spans.push(Span::styled(
            "(message recalled)",
            Style::new().italic().dim(),
        ));
    } else {
        spans.push(Span::raw(m.text.clone()));
        if m.edited_at_ms > 0 {
            spans.push(Span::styled(" (edited)", Style::new().dim()));
        }
    }
    if own && !m.recalled {
        spans.push(Span::styled(
            format!(" {}", conv.mark(m.conv_seq)),
            Style::new().fg(Color::Green),
        ));
    }
    spans
}

fn render_input(frame: &mut Frame, app: &App, area: Rect) {
    let title = match app.selected() {
        _ if app.input().starts_with('/') => " command ".to_string(),
        Some(c) => format!(" to {} ", c.title()),
        None => " type /help for commands ".to_string(),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // Show the end of a long input: that is where the cursor is.
    let room = usize::from(inner.width.saturating_sub(1));
    let text = tail(app.input(), room);
    let x = inner.x + text.width() as u16;
    frame.render_widget(Paragraph::new(text), inner);
    frame.set_cursor_position(Position::new(x, inner.y));
}

fn render_status(frame: &mut Frame, app: &App, area: Rect) {
    let (mark, state, color) = match app.link() {
        Link::Connecting => ("◌", "connecting".to_string(), Color::Yellow),
        Link::Connected => ("●", "connected".to_string(), Color::Green),
        Link::Reconnecting(why) => ("○", format!("reconnecting ({why})"), Color::Yellow),
        Link::Stopped(why) => ("✗", format!("stopped ({why})"), Color::Red),
    };
    let mut spans = vec![
        Span::styled(format!("{mark} {state}"), Style::new().fg(color)),
        Span::raw(format!(" · {} · {}", app.server(), app.me().username)),
    ];
    if let Some(n) = app.notice() {
        let style = if n.error {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Yellow)
        };
        spans.push(Span::raw(" │ "));
        spans.push(Span::styled(n.text.clone(), style));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The screen `render` draws at `width` x `height`, as text: one string
/// per row, trailing spaces trimmed (for tests and bug reports).
pub fn screen_text(app: &App, width: u16, height: u16) -> Vec<String> {
    let mut terminal =
        Terminal::new(TestBackend::new(width, height)).expect("a test backend cannot fail");
    terminal
        .draw(|f| render(f, app))
        .expect("a test backend cannot fail");
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            let row: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
            row.trim_end().to_string()
        })
        .collect()
}

/// A time as `HH:MM` when it is today at `offset_secs` east of UTC, else
/// `YYYY-MM-DD HH:MM`.
pub fn clock(at_ms: i64, now_ms: i64, offset_secs: i32) -> String {
    let offset = FixedOffset::east_opt(offset_secs).unwrap_or(FixedOffset::east_opt(0).unwrap());
    let local = |ms| DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&offset));
    match (local(at_ms), local(now_ms)) {
        (Some(at), Some(now)) if at.date_naive() == now.date_naive() => {
            at.format("%H:%M").to_string()
        }
        (Some(at), _) => at.format("%Y-%m-%d %H:%M").to_string(),
        (None, _) => "--:--".into(),
    }
}

/// `s` cut to `width` columns, with `…` when cut.
fn truncate(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// The end of `s` that fits in `width` columns.
fn tail(s: &str, width: usize) -> String {
    let mut used = 0;
    let mut start = s.len();
    for (i, c) in s.char_indices().rev() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        start = i;
    }
    s[start..].to_string()
}

/// Wraps styled text to `width` columns, breaking after spaces where it
/// can and inside words where it must; newlines in the text start new rows.
fn wrap(spans: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    let mut rows: Vec<Vec<(char, Style)>> = vec![Vec::new()];
    let mut used = 0;
    for span in &spans {
        for c in span.content.chars() {
            if c == '\n' {
                rows.push(Vec::new());
                used = 0;
                continue;
            }
            let w = c.width().unwrap_or(0);
            if used + w > width {
                let row = rows.last_mut().expect("one row at least");
                // Move the word being cut to the next row, if it started on this one.
                let carry = match row.iter().rposition(|(c, _)| *c == ' ') {
                    Some(space) if space + 1 < row.len() => row.split_off(space + 1),
                    _ => Vec::new(),
                };
                used = carry.iter().map(|(c, _)| c.width().unwrap_or(0)).sum();
                rows.push(carry);
            }
            rows.last_mut()
                .expect("one row at least")
                .push((c, span.style));
            used += w;
        }
    }
    rows.into_iter().map(row_line).collect()
}

/// Joins runs of equally styled characters back into spans.
fn row_line(row: Vec<(char, Style)>) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut text = String::new();
    let mut style = None;
    for (c, s) in row {
        if style.is_some_and(|st| st != s) {
            spans.push(Span::styled(std::mem::take(&mut text), style.unwrap()));
        }
        style = Some(s);
        text.push(c);
    }
    if let Some(s) = style {
        spans.push(Span::styled(text, s));
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::app::{Effect, HistoryTarget, IdSource, Input, Me, Outcome};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use pigeon_client::ClientEvent;
    use pigeon_client::v1::{self, event::Kind};

    /// 2025-01-02 10:00 UTC.
    const NOON: i64 = 1_735_812_000_000;

    fn app() -> App {
        let mut n = 0;
        let ids: IdSource = Box::new(move || {
            n += 1;
            format!("id-{n}")
        });
        let me = Me {
            user_id: 1,
            username: "alice".into(),
        };
        let mut app = App::new(me, "ws://chat.example:7780/ws", ids, 3600);
        app.update(
            Input::Resize {
                width: 80,
                height: 16,
            },
            NOON,
        );
        app
    }

    fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
        screen_text(app, width, height)
    }

    fn squeeze(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn contains(screen: &[String], needle: &str) -> bool {
        screen.iter().any(|row| row.contains(needle))
    }

    fn message(conv: &str, seq: u64, from: (u64, &str), text: &str, at: i64) -> Kind {
        Kind::Message(v1::Message {
            conversation_id: conv.into(),
            conv_seq: seq,
            sender_id: from.0,
            sender_username: from.1.into(),
            client_msg_id: format!("c{seq}"),
            sent_at_ms: at,
            content: Some(pigeon_client::text(text)),
            ..Default::default()
        })
    }

    fn events(app: &mut App, kinds: Vec<Kind>, now: i64) -> Vec<Effect> {
        let events = kinds
            .into_iter()
            .map(|k| v1::Event {
                kind: Some(k),
                ..Default::default()
            })
            .collect();
        app.update(
            Input::Client(ClientEvent::Events {
                events,
                key: b"k".to_vec(),
            }),
            now,
        )
    }

    fn key(app: &mut App, code: KeyCode) {
        app.update(Input::Key(KeyEvent::new(code, KeyModifiers::NONE)), NOON);
    }

    /// Checks the list shows each conversation with its unread count and
    /// preview, most recent first, groups marked with `#`, and the status
    /// line shows the link, server, user and the new-message notice.
    #[test]
    fn list_with_unread_counts_and_status() {
        let mut app = app();
        let welcome = v1::Welcome {
            user_id: 1,
            username: "alice".into(),
            ..Default::default()
        };
        app.update(Input::Client(ClientEvent::Connected { welcome }), NOON);
        events(
            &mut app,
            vec![
                message("d:1:2", 1, (2, "bob"), "hello alice", NOON - 60_000),
                message("d:1:2", 2, (2, "bob"), "are you there?", NOON - 50_000),
                Kind::GroupChange(v1::GroupChange {
                    conversation_id: "g:9".into(),
                    kind: v1::GroupChangeKind::Created as i32,
                    group: Some(v1::GroupInfo {
                        conversation_id: "g:9".into(),
                        name: "book club".into(),
                        member_count: 3,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                message("g:9", 1, (3, "olga"), "first chapter", NOON - 1000),
            ],
            NOON,
        );
        let s = screen(&app, 100, 16);
        // The list box, spaces squeezed.
        let list: Vec<String> = s[1..5]
            .iter()
            .map(|r| squeeze(&r.chars().take(30).collect::<String>()))
            .collect();
        assert_eq!(
            list,
            [
                "│ # book club (1)│",
                "│ olga: first chapter │",
                "│ bob (2)│",
                "│ bob: are you there? │"
            ],
            "{s:#?}"
        );
        let status = s.last().unwrap();
        assert!(
            status.starts_with("● connected · ws://chat.example:7780/ws · alice"),
            "{status}"
        );
        assert!(
            status.contains("new message from olga in book club"),
            "{status}"
        );
        assert!(contains(&s, "Tab or ↑/↓: pick a conversation"), "{s:#?}");
    }

    /// Checks the conversation pane: local times, senders, text wrapped to
    /// the pane, edited and recalled markers, marks on own messages
    /// (stored, delivered, read, pending, failed), the typing indicator,
    /// the input line with its cursor, and an unread count cleared by
    /// selecting the conversation.
    #[test]
    fn messages_marks_and_input() {
        let mut app = app();
        events(
            &mut app,
            vec![
                message("d:1:2", 1, (2, "bob"), "hi", NOON - 3_600_000),
                message("d:1:2", 2, (1, "alice"), "hello bob", NOON - 120_000),
                message("d:1:2", 3, (1, "alice"), "second", NOON - 60_000),
                message("d:1:2", 4, (1, "alice"), "third", NOON - 30_000),
                message("d:1:2", 5, (2, "bob"), "oops", NOON - 20_000),
                message(
                    "d:1:2",
                    6,
                    (2, "bob"),
                    "a long message that has to wrap over more than one row of the pane",
                    NOON - 10_000,
                ),
                Kind::Receipt(v1::Receipt {
                    conversation_id: "d:1:2".into(),
                    user_id: 2,
                    kind: v1::ReceiptKind::Read as i32,
                    up_to: 2,
                    ..Default::default()
                }),
                Kind::Receipt(v1::Receipt {
                    conversation_id: "d:1:2".into(),
                    user_id: 2,
                    kind: v1::ReceiptKind::Delivered as i32,
                    up_to: 3,
                    ..Default::default()
                }),
                Kind::MessageEdited(v1::MessageEdited {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 1,
                    content: Some(pigeon_client::text("hi!")),
                    edited_at_ms: NOON,
                }),
                Kind::MessageRecalled(v1::MessageRecalled {
                    conversation_id: "d:1:2".into(),
                    conv_seq: 5,
                    ..Default::default()
                }),
            ],
            NOON,
        );
        let before = screen(&app, 80, 16);
        // Bob's two messages after alice's last one are unread.
        assert!(contains(&before, "bob                (2)"), "{before:#?}");
        key(&mut app, KeyCode::Tab);
        app.update(
            Input::Done(Outcome::History {
                target: HistoryTarget::Conversation("d:1:2".into()),
                before: 0,
                result: Ok(v1::HistoryResponse {
                    conversation_id: "d:1:2".into(),
                    messages: vec![],
                    has_more: false,
                }),
            }),
            NOON,
        );
        for c in "draft".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        app.update(
            Input::Client(ClientEvent::Typing(v1::TypingPush {
                conversation_id: "d:1:2".into(),
                user_id: 2,
                username: "bob".into(),
                typing: true,
            })),
            NOON,
        );
        let s = screen(&app, 80, 16);
        assert!(!contains(&s, "(2)"), "read once in view: {s:#?}");
        assert!(contains(&s, "> bob"), "{s:#?}");
        // The pane's inside: columns 27..79 of rows 1..11.
        let pane: Vec<String> = s[1..11]
            .iter()
            .map(|r| {
                r.chars()
                    .skip(27)
                    .take(52)
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect();
        assert_eq!(
            pane,
            [
                "start of the conversation",
                // UTC+1: 09:00 UTC shows as 10:00.
                "10:00 bob: hi! (edited)",
                "10:58 alice: hello bob ✓✓ read",
                "10:59 alice: second ✓✓",
                "10:59 alice: third ✓",
                "10:59 bob: (message recalled)",
                "10:59 bob: a long message that has to wrap over",
                "more than one row of the pane",
                "",
                "bob is typing…",
            ],
            "{s:#?}"
        );
        assert!(contains(&s, "┌ to bob ─"), "{s:#?}");
        assert!(contains(&s, "│draft"), "{s:#?}");

        // Sending shows the message as pending, then failed.
        key(&mut app, KeyCode::Enter);
        let s = screen(&app, 80, 16);
        assert!(contains(&s, "alice: draft …"), "{s:#?}");
        app.update(
            Input::Done(Outcome::Sent {
                conversation_id: "d:1:2".into(),
                client_msg_id: "id-1".into(),
                result: Err("forbidden (code FORBIDDEN 306)".into()),
            }),
            NOON,
        );
        let s = screen(&app, 100, 16);
        assert!(contains(&s, "draft ✗ not sent: forbidden"), "{s:#?}");
        assert!(contains(&s, "not sent: forbidden (code FORBIDDEN 306)"));
    }

    /// Checks a group pane's header and the readers count, and the
    /// status line while reconnecting.
    #[test]
    fn group_header_and_reconnecting() {
        let mut app = app();
        events(
            &mut app,
            vec![
                Kind::GroupChange(v1::GroupChange {
                    conversation_id: "g:9".into(),
                    kind: v1::GroupChangeKind::Created as i32,
                    group: Some(v1::GroupInfo {
                        name: "crew".into(),
                        member_count: 3,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                message("g:9", 1, (1, "alice"), "hi all", NOON),
                Kind::Receipt(v1::Receipt {
                    conversation_id: "g:9".into(),
                    user_id: 2,
                    kind: v1::ReceiptKind::Read as i32,
                    up_to: 1,
                    ..Default::default()
                }),
                Kind::Receipt(v1::Receipt {
                    conversation_id: "g:9".into(),
                    user_id: 3,
                    kind: v1::ReceiptKind::Read as i32,
                    up_to: 1,
                    ..Default::default()
                }),
            ],
            NOON,
        );
        key(&mut app, KeyCode::Tab);
        app.update(
            Input::Client(ClientEvent::Disconnected {
                reason: "connection closed".into(),
            }),
            NOON,
        );
        let s = screen(&app, 80, 12);
        assert!(contains(&s, "# crew · 3 members"), "{s:#?}");
        assert!(contains(&s, "alice: hi all ✓✓ read 2"), "{s:#?}");
        assert!(
            s.last()
                .unwrap()
                .starts_with("○ reconnecting (connection closed)"),
            "{s:#?}"
        );
    }

    /// Checks tiny terminals draw without panicking, whatever is in view.
    #[test]
    fn tiny_terminals() {
        let mut app = app();
        events(
            &mut app,
            vec![message("d:1:2", 1, (2, "bob"), "a message", NOON)],
            NOON,
        );
        for (w, h) in [(1, 1), (5, 3), (12, 6), (30, 4)] {
            screen(&app, w, h);
        }
        key(&mut app, KeyCode::Tab);
        for c in "typed".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        for (w, h) in [(1, 1), (5, 3), (12, 6), (30, 4)] {
            screen(&app, w, h);
        }
        let s = screen(&app, 40, 8);
        assert!(contains(&s, "typed"), "{s:#?}");
    }

    /// Checks the time format (today, another day) and wrapping rules.
    #[test]
    fn clock_and_wrap() {
        assert_eq!(clock(NOON, NOON, 0), "10:00");
        assert_eq!(clock(NOON, NOON, -5 * 3600), "05:00");
        assert_eq!(clock(NOON - 86_400_000, NOON, 0), "2025-01-01 10:00");
        let rows = |s: &str, w| {
            wrap(vec![Span::raw(s.to_string())], w)
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(rows("ab cd ef", 5), ["ab ", "cd ef"]);
        assert_eq!(rows("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(rows("a\nb", 3), ["a", "b"]);
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(tail("abcdef", 3), "def");
    }
}
