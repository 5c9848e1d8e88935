//! One module per hook family.
pub mod iter;
pub mod state;
pub mod timewait;
