//! `twreset doctor`'s analysis: what the sysctls, counters and kernel mean for TIME_WAIT.
//!
//! `model`, `pressure`, `findings` and `report` are pure (facts passed in) and
//! unit-tested; `btf_func` walks raw BTF; `probe` talks to the kernel and is tested in tests/tests/doctor.rs.
pub mod btf_func;
pub mod findings;
pub mod model;
pub mod paths;
pub mod pressure;
pub mod probe;
pub mod report;
