//! Drawing one frame of `twreset top` from its state and two table snapshots (fits 80x24).

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Sparkline, Table},
};

use super::state::TopState;
use crate::{
    output::NsNames,
    output::tw::{age, group_heading, group_label},
    ports::Pressure,
    table::{By, Snapshot},
};

/// Pressure at or above which a destination turns yellow, and red.
pub const WARN: f64 = 0.80;
pub const CRIT: f64 = 0.95;

/// A right-aligned cell: numbers line up by their last digit.
fn num(s: impl Into<String>) -> Cell<'static> {
    Cell::from(Line::from(s.into()).right_aligned())
}

fn heading(names: &[&'static str]) -> Row<'static> {
    let cells = names.iter().enumerate().map(|(i, n)| if i == 0 { Cell::from(*n) } else { num(*n) });
    Row::new(cells).style(Style::new().add_modifier(Modifier::BOLD))
}

pub fn pressure_style(ratio: f64) -> Style {
    match ratio {
        r if r >= CRIT => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        r if r >= WARN => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    }
}

/// What one frame shows.
pub struct Screen<'a> {
    pub state: &'a TopState,
    /// Rows in the chosen grouping and sort.
    pub rows: &'a Snapshot,
    /// Destinations by pressure, for the pressure panel.
    pub dests: &'a Snapshot,
    pub names: &'a NsNames,
    /// The agent's auto-relief in one line ([`relief_line`]), when `top` runs through an agent
    /// that has rules.
    pub relief: Option<&'a str>,
}

/// `GET /v1/relief` in one line: mode, pause, budget left, each rule's last decision.
pub fn relief_line(status: &serde_json::Value) -> Option<String> {
    let rules = status["rules"].as_array().filter(|r| !r.is_empty())?;
    let mut line = format!(
        "relief {}{}  budget {}/min left",
        status["mode"].as_str().unwrap_or("?"),
        if status["paused"] == true { " PAUSED" } else { "" },
        status["budget_left_this_minute"]
    );
    for r in rules {
        let last = &r["last_decision"];
        let what = match last["decision"].as_str() {
            Some(d) => format!("{d} {} to {}:{}", last["count"], last["raddr"].as_str().unwrap_or("?"), last["rport"]),
            None => "no decision yet".into(),
        };
        line.push_str(&format!(" | {}: {what}", r["rule"].as_str().unwrap_or("?")));
    }
    Some(line)
}

pub fn draw(f: &mut Frame, s: &Screen) {
    let [head, spark, main, press, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Min(5),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let head = match s.relief {
        // The relief line takes the sparkline's top row.
        Some(text) => {
            let [h, r] =
                Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(Rect { height: 2, ..head });
            f.render_widget(Paragraph::new(Line::from(text.to_owned()).style(Style::new().fg(Color::Yellow))), r);
            h
        }
        None => head,
    };
    let spark = if s.relief.is_some() { Rect { y: spark.y + 1, height: spark.height - 1, ..spark } } else { spark };
    f.render_widget(Paragraph::new(header(s)), head);
    draw_sparkline(f, s, spark);
    draw_rows(f, s, main);
    draw_pressure(f, s, press);
    f.render_widget(Paragraph::new(footer(s.state)).style(Style::new().add_modifier(Modifier::REVERSED)), foot);
}

fn header(s: &Screen) -> Line<'static> {
    let t = &s.rows.totals;
    let c = &t.counters;
    let bad = |n: u64| if n > 0 { Style::new().fg(Color::Red).add_modifier(Modifier::BOLD) } else { Style::new() };
    Line::from(vec![
        Span::styled(format!("tw {}", t.count), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  TIME_WAIT {}  FIN_WAIT2 {}  ", t.time_wait(), t.fin_wait2)),
        Span::styled(format!("overflow {}", c.overflow), bad(c.overflow)),
        Span::raw("  "),
        Span::styled(format!("lost {}", c.lost), bad(c.lost)),
        Span::raw("  "),
        Span::styled(format!("drift {}", c.drift), bad(c.drift)),
        Span::raw(format!("  resyncs {}", c.resyncs)),
    ])
}

fn draw_sparkline(f: &mut Frame, s: &Screen, area: Rect) {
    let block = Block::bordered().title(format!(" tw sockets over time (every {:?}) ", s.state.interval));
    let width = block.inner(area).width as usize;
    let h = &s.state.history;
    let data: Vec<u64> = h.iter().skip(h.len().saturating_sub(width)).copied().collect();
    f.render_widget(Sparkline::default().block(block).data(&data).style(Style::new().fg(Color::Cyan)), area);
}

fn pressure_cells(p: &Pressure) -> [Cell<'static>; 4] {
    let style = pressure_style(p.ratio);
    [
        num(format!("{:.1}%", p.ratio * 100.0)).style(style),
        num(format!("{:.1}", p.rate_per_s)),
        num(p.exhaustion_s.map_or("never".into(), |e| age(Some(e)))).style(style),
        num(p.holding.to_string()),
    ]
}

fn draw_rows(f: &mut Frame, s: &Screen, area: Rect) {
    let by = s.rows.by;
    let title = format!(" by {} · sort {} · {} rows ", by.name(), s.state.sort.name(), s.rows.rows.len());
    let (header, widths): (Vec<&str>, Vec<Constraint>) = if by == By::Dest {
        (
            vec![group_heading(by), "COUNT", "OLDEST", "KILLS", "PRESS", "RATE/s", "EXHAUST"],
            vec![
                Constraint::Min(18),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(7),
            ],
        )
    } else {
        (
            vec![group_heading(by), "COUNT", "FW2", "OLDEST", "NEWEST", "KILLS"],
            vec![
                Constraint::Min(18),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(6),
            ],
        )
    };
    let rows = s.rows.rows.iter().map(|r| {
        let label = Cell::from(group_label(&r.group, s.names));
        match r.pressure {
            Some(p) if by == By::Dest => {
                let [press, rate, exhaust, _] = pressure_cells(&p);
                Row::new(vec![
                    label,
                    num(r.count.to_string()),
                    num(age(r.oldest_s)),
                    num(r.kills_total().to_string()),
                    press,
                    rate,
                    exhaust,
                ])
            }
            _ => Row::new(vec![
                label,
                num(r.count.to_string()),
                num(r.fin_wait2.to_string()),
                num(age(r.oldest_s)),
                num(age(r.newest_s)),
                num(r.kills_total().to_string()),
            ]),
        }
    });
    let table = Table::new(rows, widths).header(heading(&header)).block(Block::bordered().title(title));
    f.render_widget(table, area);
}

fn draw_pressure(f: &mut Frame, s: &Screen, area: Rect) {
    let block = Block::bordered().title(" port pressure per destination (local -> remote:port) ");
    if s.dests.rows.is_empty() {
        f.render_widget(Paragraph::new("no outgoing connections from ephemeral ports").block(block), area);
        return;
    }
    let rows = s.dests.rows.iter().filter_map(|r| {
        let p = r.pressure?;
        let [press, rate, exhaust, holding] = pressure_cells(&p);
        let style = pressure_style(p.ratio);
        Some(Row::new(vec![
            Cell::from(group_label(&r.group, s.names)).style(style),
            holding,
            num(p.range.to_string()),
            press,
            rate,
            exhaust,
        ]))
    });
    let widths = [
        Constraint::Min(18),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    let header = heading(&["DESTINATION", "HOLD", "PORTS", "PRESS", "RATE/s", "EXHAUST"]);
    f.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

fn footer(s: &TopState) -> Line<'static> {
    let mut text = format!(" g group:{}  s sort:{}  +/- every {:?}  q quit", s.by.name(), s.sort.name(), s.interval);
    if s.feed_closed {
        text.push_str("  [kernel feed closed]");
    }
    Line::from(text)
}
