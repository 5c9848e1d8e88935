//! The `twreset top` screen: state and keys (`state`), drawing (`ui`), the terminal (`term`).
//! The command itself (args, the live loop) is `cmd::top`.

pub mod state;
pub mod term;
pub mod ui;

#[cfg(test)]
mod ui_tests;
