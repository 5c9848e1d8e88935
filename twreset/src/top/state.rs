//! What the `top` screen is showing and how keys change it (pure: no terminal, no clock).

use std::{collections::VecDeque, time::Duration};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::table::{By, Sort};

/// Refresh intervals `+` and `-` step through.
pub const INTERVALS: [Duration; 7] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// Samples of the total kept for the sparkline (wider than any terminal line needs).
pub const HISTORY: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Grouping or sort changed: recompute rows now.
    Redraw,
    /// Refresh interval changed: restart the ticker.
    Interval,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopState {
    pub by: By,
    pub sort: Sort,
    pub interval: Duration,
    /// Total tw sockets at each refresh, oldest first.
    pub history: VecDeque<u64>,
    /// Kernel events stopped (the feed closed): the table only changes by reconciles now.
    pub feed_closed: bool,
}

impl TopState {
    pub fn new(by: By, interval: Duration) -> Self {
        Self { by, sort: Sort::Count, interval, history: VecDeque::with_capacity(HISTORY), feed_closed: false }
    }

    pub fn sample(&mut self, total: u64) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(total);
    }

    fn step_interval(&mut self, longer: bool) -> Action {
        let i = INTERVALS.iter().position(|d| *d >= self.interval).unwrap_or(INTERVALS.len() - 1);
        let j = if longer { (i + 1).min(INTERVALS.len() - 1) } else { i.saturating_sub(1) };
        if INTERVALS[j] == self.interval {
            return Action::None;
        }
        self.interval = INTERVALS[j];
        Action::Interval
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::None;
        }
        match k.code {
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Char('g') => {
                self.by = self.by.next_in_top();
                Action::Redraw
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            KeyCode::Char('+') | KeyCode::Char('=') => self.step_interval(true),
            KeyCode::Char('-') | KeyCode::Char('_') => self.step_interval(false),
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn quit_keys() {
        let mut s = TopState::new(By::Peer, Duration::from_secs(1));
        assert_eq!(s.on_key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(s.on_key(key(KeyCode::Esc)), Action::Quit);
        assert_eq!(s.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(s.on_key(key(KeyCode::Char('c'))), Action::None);
        assert_eq!(s.on_key(key(KeyCode::Char('x'))), Action::None);
    }

    #[test]
    fn grouping_and_sort_cycle() {
        let mut s = TopState::new(By::Peer, Duration::from_secs(1));
        let mut seen = vec![];
        for _ in 0..4 {
            assert_eq!(s.on_key(key(KeyCode::Char('g'))), Action::Redraw);
            seen.push(s.by);
        }
        assert_eq!(seen, [By::Prefix, By::Port, By::Dest, By::Peer]);
        assert_eq!(s.on_key(key(KeyCode::Char('s'))), Action::Redraw);
        assert_eq!(s.sort, Sort::Oldest);
        let mut release = key(KeyCode::Char('g'));
        release.kind = KeyEventKind::Release;
        assert_eq!(s.on_key(release), Action::None);
        assert_eq!(s.by, By::Peer);
    }

    #[test]
    fn interval_steps_and_clamps() {
        let mut s = TopState::new(By::Peer, Duration::from_secs(1));
        assert_eq!(s.on_key(key(KeyCode::Char('+'))), Action::Interval);
        assert_eq!(s.interval, Duration::from_secs(2));
        for _ in 0..10 {
            s.on_key(key(KeyCode::Char('+')));
        }
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.on_key(key(KeyCode::Char('+'))), Action::None);
        for _ in 0..10 {
            s.on_key(key(KeyCode::Char('-')));
        }
        assert_eq!(s.interval, Duration::from_millis(250));
        assert_eq!(s.on_key(key(KeyCode::Char('-'))), Action::None);
        // An interval between steps snaps onto the ladder.
        let mut s = TopState::new(By::Peer, Duration::from_millis(700));
        s.on_key(key(KeyCode::Char('-')));
        assert_eq!(s.interval, Duration::from_millis(500));
        let mut s = TopState::new(By::Peer, Duration::from_secs(90));
        s.on_key(key(KeyCode::Char('-')));
        assert_eq!(s.interval, Duration::from_secs(10));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = TopState::new(By::Peer, Duration::from_secs(1));
        for i in 0..(HISTORY as u64 + 10) {
            s.sample(i);
        }
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history.front(), Some(&10));
    }
}
