//! One module per subcommand: its clap args, validated config and runner.
pub mod top;
pub mod kill;
pub mod trace;
pub mod tw;
