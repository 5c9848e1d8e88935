//! twreset: live TIME_WAIT tables and targeted TCP socket kills. Data flows one way:
//! `probe` (kernel) -> `decode` -> tables -> policy -> kill -> `output`.
pub mod agent;
pub mod api;
pub mod cli;
pub mod cmd;
pub mod crosscheck;
pub mod decode;
pub mod diag;
pub mod doctor;
pub mod duration;
pub mod kernel;
pub mod kill;
pub mod live;
pub mod ndjson;
pub mod output;
pub mod policy;
pub mod ports;
pub mod probe;
pub mod scope;
pub mod session;
pub mod sock;
pub mod state;
pub mod synrecv;
pub mod table;
pub mod top;
pub mod tw_event;
pub mod twfeed;
