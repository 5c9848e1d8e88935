//! One module per subcommand: its clap args, validated config and runner.
pub mod agent;
pub mod doctor;
pub mod kill;
pub mod top;
pub mod trace;
pub mod tw;
