//! The `top` screen rendered into an 80x24 test buffer from a fed table.

use std::time::Duration;

use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    style::Color,
};

use super::{
    state::{Action, TopState},
    ui::{self, Screen},
};
use crate::{
    output::NsNames,
    ports::{Connected, Dest, PortRange, PortSpace, PortSpaces},
    sock::SockKey,
    state::TcpState,
    table::{By, Sort, Table, ViewConfig},
    tw_event::{TwCause, TwEvent, TwEventKind},
};

const S: u64 = 1_000_000_000;

fn add(t: &mut Table, n: u16, raddr: &str, rport: u16, ts: u64) -> SockKey {
    let laddr = if raddr.contains(':') { "fd00::1" } else { "10.0.0.1" };
    let key = SockKey {
        netns_cookie: 1,
        laddr: laddr.parse().unwrap(),
        lport: 40000 + n,
        raddr: raddr.parse().unwrap(),
        rport,
    };
    t.apply(&TwEvent {
        ts_ns: ts * S,
        key,
        kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
    });
    key
}

fn fed() -> Table {
    let mut t = Table::new();
    for n in 0..7 {
        add(&mut t, n, "10.0.0.2", 443, 10);
    }
    for n in 10..13 {
        add(&mut t, n, "10.0.0.3", 80, 20);
    }
    let k = add(&mut t, 20, "fd00::2", 443, 25);
    t.apply(&TwEvent { ts_ns: 26 * S, key: k, kind: TwEventKind::Killed { cause: TwCause::SockDestroy } });
    add(&mut t, 21, "fd00::2", 443, 27);
    t.set_overflow(1);
    t
}

fn text(buf: &Buffer) -> Vec<String> {
    let w = buf.area.width as usize;
    buf.content().chunks(w).map(|row| row.iter().map(|c| c.symbol()).collect()).collect()
}

fn render(t: &Table, state: &TopState, ranges: &PortSpaces, connected: &Connected) -> Buffer {
    let rows = t.snapshot(30 * S, state.by, state.sort, &ViewConfig::default(), connected, ranges);
    let dests = t.snapshot(30 * S, By::Dest, Sort::Pressure, &ViewConfig::default(), connected, ranges);
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let names = NsNames::default();
    term.draw(|f| ui::draw(f, &Screen { state, rows: &rows, dests: &dests, names: &names, relief: None })).unwrap();
    term.backend().buffer().clone()
}

fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", lines.join("\n")))
}

fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || c == '│').filter(|w| !w.is_empty()).collect()
}

#[test]
fn shows_peers_counts_and_totals_in_80x24() {
    let t = fed();
    let mut state = TopState::new(By::Peer, Duration::from_secs(1));
    for n in [3, 5, 8, 11] {
        state.sample(n);
    }
    let lines = text(&render(&t, &state, &PortSpaces::default(), &Connected::default()));
    assert_eq!(lines.len(), 24);
    assert!(lines[0].starts_with("tw 11  TIME_WAIT 11  FIN_WAIT2 0  overflow 1  lost 0  drift 0"), "{}", lines[0]);
    let peer = words(line_with(&lines, "10.0.0.2 "));
    assert_eq!(&peer[..3], ["10.0.0.2", "7", "0"], "{peer:?}");
    assert_eq!(&words(line_with(&lines, "10.0.0.3 "))[..2], ["10.0.0.3", "3"]);
    let v6 = words(line_with(&lines, "fd00::2 "));
    assert_eq!((v6[1], v6.last().copied()), ("1", Some("1")), "one live, one killed: {v6:?}");
    assert!(line_with(&lines, "by peer").contains("sort count"));
    assert!(lines[23].contains("g group:peer") && lines[23].contains("q quit"), "{}", lines[23]);
    // Peers come in count order.
    let pos = |s: &str| lines.iter().position(|l| l.contains(s)).unwrap();
    assert!(pos("10.0.0.2 ") < pos("10.0.0.3 ") && pos("10.0.0.3 ") < pos("fd00::2 "));
}

#[test]
fn key_press_changes_grouping() {
    let t = fed();
    let mut state = TopState::new(By::Peer, Duration::from_secs(1));
    assert_eq!(state.on_key(KeyEvent::new(KeyCode::Char('g'), KeyModifiers::NONE)), Action::Redraw);
    let lines = text(&render(&t, &state, &PortSpaces::default(), &Connected::default()));
    line_with(&lines, "by prefix");
    line_with(&lines, "PREFIX");
    assert_eq!(&words(line_with(&lines, "10.0.0.0/24"))[..2], ["10.0.0.0/24", "10"]);
    assert_eq!(&words(line_with(&lines, "fd00::/64"))[..2], ["fd00::/64", "1"]);
    state.on_key(KeyEvent::new(KeyCode::Char('g'), KeyModifiers::NONE));
    let lines = text(&render(&t, &state, &PortSpaces::default(), &Connected::default()));
    assert!(lines.iter().any(|l| l.contains("RPORT")));
    assert_eq!(&words(line_with(&lines, "│443 "))[..2], ["443", "8"]);
}

#[test]
fn pressure_colours_near_exhaustion() {
    let t = fed();
    let mut ranges = PortSpaces::default();
    ranges.per_ns.insert(1, PortSpace { range: PortRange { lo: 40000, hi: 40009 }, reserved: vec![] }); // 10 ports
    let dest = |raddr: &str, rport| Dest {
        netns: 1,
        laddr: "10.0.0.1".parse().unwrap(),
        raddr: raddr.parse().unwrap(),
        rport,
    };
    // 10.0.0.2:443 holds 7 tw (ports 40000-40006) + 3 connected = 100%; 10.0.0.3:80 none in range.
    let connected = Connected([(dest("10.0.0.2", 443), 3), (dest("10.0.0.4", 22), 8)].into_iter().collect());
    let state = TopState::new(By::Dest, Duration::from_secs(1));
    let buf = render(&t, &state, &ranges, &connected);
    let lines = text(&buf);
    let full = lines.iter().rposition(|l| l.contains("10.0.0.1 -> 10.0.0.2:443")).unwrap();
    assert!(lines[full].contains("100.0%"), "{}", lines[full]);
    let warn = lines.iter().rposition(|l| l.contains("10.0.0.1 -> 10.0.0.4:22")).unwrap();
    assert!(lines[warn].contains("80.0%"), "{}", lines[warn]);
    let colour_of = |row: usize, needle: &str| {
        let col = lines[row].find(needle).unwrap();
        let col = lines[row][..col].chars().count();
        buf[(col as u16, row as u16)].fg
    };
    assert_eq!(colour_of(full, "100.0%"), Color::Red);
    assert_eq!(colour_of(warn, "80.0%"), Color::Yellow);
}

#[test]
fn empty_table_still_draws() {
    let lines = text(&render(
        &Table::new(),
        &TopState::new(By::Dest, Duration::from_secs(1)),
        &PortSpaces::default(),
        &Connected::default(),
    ));
    assert!(lines[0].starts_with("tw 0"));
    assert!(lines.iter().any(|l| l.contains("no outgoing connections")));
}

#[test]
fn tiny_and_huge_terminals_do_not_panic() {
    let t = fed();
    let state = TopState::new(By::Dest, Duration::from_secs(1));
    let rows = t.snapshot(
        30 * S,
        By::Dest,
        Sort::Count,
        &ViewConfig::default(),
        &Connected::default(),
        &PortSpaces::default(),
    );
    let names = NsNames::default();
    for (w, h) in [(1, 1), (20, 5), (40, 10), (80, 24), (300, 100)] {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| ui::draw(f, &Screen { state: &state, rows: &rows, dests: &rows, names: &names, relief: None }))
            .unwrap();
    }
}

#[test]
fn the_agents_relief_shows_in_one_line_under_the_totals() {
    let status = serde_json::json!({
        "mode": "enforce", "paused": true, "max_kills_per_minute": 60000, "kills_last_minute": 120,
        "budget_left_this_minute": 59880,
        "rules": [
            {"rule": "backend", "kills_last_minute": 120, "max_kills_per_minute": null, "budget_left_this_minute": 59880,
             "last_decision": {"decision": "killed", "at_ns": 1, "netns": "host", "laddr": "10.0.0.1",
                               "raddr": "10.1.2.3", "rport": 443, "pressure": 0.91, "pressure_after": 0.5,
                               "wanted": 120, "count": 120}},
            {"rule": "idle", "kills_last_minute": 0, "max_kills_per_minute": null, "budget_left_this_minute": 59880,
             "last_decision": null}
        ]
    });
    let line = ui::relief_line(&status).expect("rules: a line");
    assert_eq!(
        line,
        "relief enforce PAUSED  budget 59880/min left | backend: killed 120 to 10.1.2.3:443 | idle: no decision yet"
    );
    assert_eq!(ui::relief_line(&serde_json::json!({"mode": "dry-run", "rules": []})), None, "no rule, no line");
    // Drawn on the second row, the totals stay on the first.
    let t = fed();
    let state = TopState::new(By::Peer, std::time::Duration::from_secs(1));
    let (ranges, connected) = (PortSpaces::default(), Connected::default());
    let rows = t.snapshot(30 * S, state.by, state.sort, &ViewConfig::default(), &connected, &ranges);
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let names = NsNames::default();
    let relief = Some(line.as_str());
    term.draw(|f| ui::draw(f, &Screen { state: &state, rows: &rows, dests: &rows, names: &names, relief })).unwrap();
    let lines = text(term.backend().buffer());
    assert!(lines[0].starts_with("tw "), "{}", lines.join("\n"));
    assert!(lines[1].starts_with("relief enforce PAUSED"), "{}", lines.join("\n"));
}
