//! Kernel struct member offsets from the running kernel's BTF (aya-ebpf emits no CO-RE
//! relocations, so the eBPF side receives these as globals at load time).

use std::path::{Path, PathBuf};

use btf_rs::{Btf, BtfType, Type};
use twreset_common::KernelOffsets;

use crate::kernel::netns::{IdKind, id_kind};

/// Where the kernel exposes its BTF; `TWRESET_BTF` overrides it (tests, unusual systems).
pub fn vmlinux_path() -> PathBuf {
    std::env::var_os("TWRESET_BTF").map(PathBuf::from).unwrap_or_else(|| "/sys/kernel/btf/vmlinux".into())
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {}: this kernel was built without CONFIG_DEBUG_INFO_BTF, which twreset needs to read socket fields",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot parse kernel BTF at {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF has no raw tracepoint {name} (no typedef btf_trace_{name})")]
    NoTracepoint { name: String },
    #[error("raw tracepoint {name} takes ({}) on this kernel, twreset reads ({})", found.join(", "), expected.join(", "))]
    Prototype { name: String, found: Vec<String>, expected: Vec<String> },
}

/// Parsed kernel BTF.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Self::from_path(&vmlinux_path())
    }

    pub fn from_path(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing { path: path.to_owned() });
        }
        let btf = Btf::from_file(path).map_err(|source| BtfError::Parse { path: path.to_owned(), source })?;
        Ok(Self { btf })
    }

    /// Byte offset of `member` in `struct strukt`, searching through anonymous structs and unions
    /// (for example `skc_tw_rcv_nxt` lives in an anonymous union of `sock_common`).
    pub fn offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let no_struct = || BtfError::NoStruct { name: strukt.to_owned() };
        let types = self.btf.resolve_types_by_name(strukt).map_err(|_| no_struct())?;
        let st = types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(no_struct)?;
        self.find(&st, member, 0)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })
    }

    fn find(&self, st: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = base_bits + m.bit_offset();
            if name == member {
                return Some(bits / 8);
            }
            if name.is_empty()
                && let Ok(Type::Struct(inner) | Type::Union(inner)) = self.resolved(m)
                && let Some(off) = self.find(&inner, member, bits)
            {
                return Some(off);
            }
        }
        None
    }

    /// The C types of a raw tracepoint's arguments (its `TP_PROTO`), read from the BTF typedef
    /// `btf_trace_<name>`, whose first parameter (the `void *` context) is left out.
    pub fn raw_tracepoint_args(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let none = || BtfError::NoTracepoint { name: name.to_owned() };
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .map_err(|_| none())?
            .into_iter()
            .find_map(|t| match t {
                Type::Typedef(t) => Some(t),
                _ => None,
            })
            .ok_or_else(none)?;
        let Ok(Type::Ptr(ptr)) = self.btf.resolve_chained_type(&typedef) else { return Err(none()) };
        let Ok(Type::FuncProto(proto)) = self.btf.resolve_chained_type(&ptr) else { return Err(none()) };
        Ok(proto.parameters.iter().skip(1).map(|p| self.type_name(p)).collect())
    }

    /// Fail unless raw tracepoint `name`'s leading arguments are `expected` (C type names,
    /// `const` ignored): the ones a program reads.
    pub fn check_raw_tracepoint(&self, name: &str, expected: &[&str]) -> Result<(), BtfError> {
        let found = self.raw_tracepoint_args(name)?;
        let bare = |t: &str| t.replace("const ", "");
        if found.len() >= expected.len() && found.iter().zip(expected).all(|(f, e)| bare(f) == bare(e)) {
            return Ok(());
        }
        Err(BtfError::Prototype {
            name: name.to_owned(),
            found,
            expected: expected.iter().map(|e| e.to_string()).collect(),
        })
    }

    /// C spelling of the type `t` refers to (enough for tracepoint arguments).
    fn type_name(&self, t: &dyn BtfType) -> String {
        let Ok(ty) = self.btf.resolve_chained_type(t) else { return "?".into() };
        let name = |x: &dyn BtfType| self.btf.resolve_name(x).unwrap_or_default();
        match &ty {
            Type::Void => "void".into(),
            Type::Int(x) => name(x),
            Type::Typedef(x) => name(x),
            Type::Struct(x) => format!("struct {}", name(x)),
            Type::Union(x) => format!("union {}", name(x)),
            Type::Enum(x) => format!("enum {}", name(x)),
            Type::Ptr(x) => format!("{} *", self.type_name(x)),
            Type::Const(x) => format!("const {}", self.type_name(x)),
            Type::Volatile(x) => format!("volatile {}", self.type_name(x)),
            _ => "?".into(),
        }
    }

    /// The member's type with typedefs and qualifiers peeled off.
    fn resolved(&self, m: &dyn BtfType) -> Result<Type, btf_rs::Error> {
        let mut t = self.btf.resolve_chained_type(m)?;
        loop {
            t = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x)?,
                Type::Const(x) => self.btf.resolve_chained_type(x)?,
                Type::Volatile(x) => self.btf.resolve_chained_type(x)?,
                _ => return Ok(t),
            };
        }
    }
}

/// Offset in `struct net` of the namespace identity `kind` names (`netns::IdKind`).
pub fn net_id_offset(btf: &KernelBtf, kind: IdKind) -> Result<u32, BtfError> {
    match kind {
        IdKind::Cookie => btf.offset("net", "net_cookie"),
        IdKind::Inode => Ok(btf.offset("net", "ns")? + btf.offset("ns_common", "inum")?),
    }
}

/// Fill the struct offsets of [`KernelOffsets`] from BTF (function addresses stay 0: kallsyms).
/// The namespace identity is the one the running kernel supports (`netns::id_kind`).
pub fn kernel_offsets(btf: &KernelBtf) -> Result<KernelOffsets, BtfError> {
    let sc = |m: &str| btf.offset("sock_common", m);
    let id = id_kind();
    Ok(KernelOffsets {
        skc_net: sc("skc_net")?,
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_num: sc("skc_num")?,
        skc_family: sc("skc_family")?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        net_cookie: net_id_offset(btf, id)?,
        net_id_u32: u32::from(id.btf_field().1),
        tw_substate: btf.offset("inet_timewait_sock", "tw_substate")?,
        tw_timer: btf.offset("inet_timewait_sock", "tw_timer")?,
        timer_function: btf.offset("timer_list", "function")?,
        sk_err: btf.offset("sock", "sk_err")?,
        timer_expires: btf.offset("timer_list", "expires")?,
        sk_protocol: btf.offset("sock", "sk_protocol")?,
        inet_sport: btf.offset("inet_sock", "inet_sport")?,
        // Absent without CONFIG_BPF: then there is no sock_ops source, nothing else changes.
        tcp_cb_flags: btf.offset("tcp_sock", "bpf_sock_ops_cb_flags").unwrap_or(0),
        skc_pprev: sc("skc_node")? + btf.offset("hlist_node", "pprev")?,
        // `sk_flags` is `__sk_common.skc_flags` since 6.11; a member of `struct sock` before.
        sk_flags: sc("skc_flags").or_else(|_| btf.offset("sock", "sk_flags"))?,
        sk_socket: btf.offset("sock", "sk_socket")?,
        ..KernelOffsets::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF; `None` (skip) only outside CI.
    fn running_kernel_btf() -> Option<KernelBtf> {
        let path = vmlinux_path();
        if !path.exists() {
            assert!(std::env::var("CI").is_err(), "CI needs kernel BTF at {}", path.display());
            eprintln!("skipping: no kernel BTF");
            return None;
        }
        Some(KernelBtf::from_path(&path).unwrap())
    }

    /// The raw tracepoints the programs attach to take what they read (`probe::RAW_TRACEPOINTS`).
    #[test]
    fn raw_tracepoint_prototypes_from_running_kernel() {
        let Some(btf) = running_kernel_btf() else { return };
        assert_eq!(
            btf.raw_tracepoint_args("inet_sock_set_state").unwrap(),
            ["const struct sock *", "const int", "const int"]
        );
        assert_eq!(btf.raw_tracepoint_args("timer_cancel").unwrap(), ["struct timer_list *"]);
        for (name, args) in crate::probe::RAW_TRACEPOINTS {
            btf.check_raw_tracepoint(name, args).unwrap();
        }
        let err = btf.check_raw_tracepoint("timer_cancel", &["struct sock *"]).unwrap_err();
        assert!(err.to_string().contains("takes (struct timer_list *)"), "{err}");
        let err = btf.check_raw_tracepoint("timer_cancel", &["struct timer_list *", "int"]).unwrap_err();
        assert!(matches!(err, BtfError::Prototype { .. }), "{err}");
        assert!(matches!(btf.raw_tracepoint_args("no_such_tracepoint"), Err(BtfError::NoTracepoint { .. })));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = KernelBtf::from_path(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    /// Reads the real kernel's BTF; the values are those measured on 6.18 (docs/internals/kernel-abi.md).
    #[test]
    fn offsets_from_running_kernel() {
        let Some(btf) = running_kernel_btf() else { return };
        let off = kernel_offsets(&btf).unwrap();
        // The 6.18 values in docs/internals/kernel-abi.md; other kernels may differ, so only on 6.18.
        if std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().starts_with("6.18") {
            assert_eq!((off.skc_daddr, off.skc_rcv_saddr, off.skc_dport, off.skc_num, off.skc_net), (0, 4, 12, 14, 48));
            assert_eq!((off.tw_substate, off.tw_timer, off.net_cookie), (140, 160, 4160));
            assert_eq!(off.net_id_u32, 0, "6.18 has SO_NETNS_COOKIE");
        }
        assert_eq!((off.timer_expires, off.timer_function), (16, 24));
        assert_eq!(off.sk_protocol, btf.offset("sock", "sk_protocol").unwrap());
        assert!(off.inet_sport > off.sk_protocol, "inet_sock embeds struct sock first");
        assert!(off.tcp_cb_flags > off.inet_sport, "tcp_sock embeds inet_sock first");
        // skc_node (a union with skc_nulls_node, same layout) opens the hash-linked part.
        assert_eq!(off.skc_pprev, btf.offset("sock_common", "skc_nulls_node").unwrap() + 8);
        assert_eq!(off.skc_pprev, btf.offset("sock_common", "skc_node").unwrap() + 8);
        assert!(off.sk_flags < off.inet_sport && off.sk_flags.is_multiple_of(8), "an unsigned long of struct sock");
        if std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().starts_with("6.18") {
            assert_eq!((off.sk_flags, off.skc_pprev), (96, 112), "in sock_common, before its hash links");
        }
        // Both identities resolve on every kernel in the matrix; `ns.inum` is a u32 inside struct net.
        let inum = net_id_offset(&btf, IdKind::Inode).unwrap();
        assert!(inum > 0 && inum < btf.offset("net", "net_cookie").unwrap_or(u32::MAX));
        // Member inside an anonymous union of sock_common.
        assert!(btf.offset("sock_common", "skc_tw_rcv_nxt").is_ok());
        assert!(matches!(btf.offset("sock_common", "no_such_member"), Err(BtfError::NoMember { .. })));
    }
}
