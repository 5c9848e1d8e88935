//! Facts read from the running kernel: BTF offsets, tracefs, namespaces, privileges, procfs.
pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod identity;
pub mod kallsyms;
pub mod netns;
pub mod procfs;
pub mod tracefs;
