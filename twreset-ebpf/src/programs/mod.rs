//! One module per hook family.
pub mod iter;
pub mod own;
pub mod sockops;
pub mod state;
pub mod timewait;
