//! One module per hook family.
pub mod state;
pub mod timewait;
