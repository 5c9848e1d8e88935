//! Kernel struct member offsets from the running kernel's BTF (aya-ebpf emits no CO-RE
//! relocations, so the eBPF side receives these as globals at load time).

use std::path::{Path, PathBuf};

use btf_rs::{Btf, BtfType, Type};
use twreset_common::KernelOffsets;

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

/// Fill the struct offsets of [`KernelOffsets`] from BTF (function addresses stay 0: kallsyms).
pub fn kernel_offsets(btf: &KernelBtf) -> Result<KernelOffsets, BtfError> {
    let sc = |m: &str| btf.offset("sock_common", m);
    Ok(KernelOffsets {
        skc_net: sc("skc_net")?,
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_num: sc("skc_num")?,
        skc_family: sc("skc_family")?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        net_cookie: btf.offset("net", "net_cookie")?,
        tw_substate: btf.offset("inet_timewait_sock", "tw_substate")?,
        tw_timer: btf.offset("inet_timewait_sock", "tw_timer")?,
        timer_function: btf.offset("timer_list", "function")?,
        sk_err: btf.offset("sock", "sk_err")?,
        ..KernelOffsets::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = KernelBtf::from_path(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    /// Reads the real kernel's BTF; the values are those KERNEL.md measured on 6.18.
    #[test]
    fn offsets_from_running_kernel() {
        let path = vmlinux_path();
        if !path.exists() {
            assert!(std::env::var("CI").is_err(), "CI needs kernel BTF at {}", path.display());
            eprintln!("skipping: no kernel BTF");
            return;
        }
        let btf = KernelBtf::from_path(&path).unwrap();
        let off = kernel_offsets(&btf).unwrap();
        // The 6.18 values KERNEL.md measured; other kernels may differ, so only on 6.18.
        if std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().starts_with("6.18") {
            assert_eq!((off.skc_daddr, off.skc_rcv_saddr, off.skc_dport, off.skc_num, off.skc_net), (0, 4, 12, 14, 48));
            assert_eq!((off.tw_substate, off.tw_timer, off.net_cookie), (140, 160, 4160));
        }
        assert_eq!(off.timer_function, 24);
        // Member inside an anonymous union of sock_common.
        assert!(btf.offset("sock_common", "skc_tw_rcv_nxt").is_ok());
        assert!(matches!(btf.offset("sock_common", "no_such_member"), Err(BtfError::NoMember { .. })));
    }
}
