//! Find a kernel function's (or a tracepoint typedef's) BTF type id by walking raw BTF: the fentry
//! and tp_btf probes need one id each, and a full parse of vmlinux BTF costs ~0.4 s and 40 MB, ten
//! times the rest of `twreset doctor`.
//! Layout: include/uapi/linux/btf.h.

const MAGIC: u16 = 0xeb9f;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfFuncError {
    #[error("not BTF (bad magic or header)")]
    Header,
    #[error("BTF type {id} of unknown kind {kind}")]
    Kind { id: u32, kind: u32 },
    #[error("BTF truncated at type {id}")]
    Truncated { id: u32 },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Bytes following a `btf_type` of this kind (`vlen` = its member/param count).
fn extra(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
        _ => return None,
    })
}

/// Type id of the FUNC named `name`, `Ok(None)` when there is none.
pub fn func_id(btf: &[u8], name: &str) -> Result<Option<u32>, BtfFuncError> {
    type_id(btf, KIND_FUNC, name)
}

/// Type id of the typedef `btf_trace_<tracepoint>` a tp_btf program attaches to, `Ok(None)` when
/// there is none.
pub fn tracepoint_id(btf: &[u8], tracepoint: &str) -> Result<Option<u32>, BtfFuncError> {
    type_id(btf, KIND_TYPEDEF, &format!("btf_trace_{tracepoint}"))
}

fn type_id(btf: &[u8], want: u32, name: &str) -> Result<Option<u32>, BtfFuncError> {
    let hdr = |at| u32_at(btf, at).ok_or(BtfFuncError::Header);
    if btf.len() < 24 || u16::from_ne_bytes([btf[0], btf[1]]) != MAGIC {
        return Err(BtfFuncError::Header);
    }
    let hdr_len = hdr(4)? as usize;
    let (type_off, type_len, str_off, str_len) =
        (hdr(8)? as usize, hdr(12)? as usize, hdr(16)? as usize, hdr(20)? as usize);
    let types = btf.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(BtfFuncError::Header)?;
    let strings = btf.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(BtfFuncError::Header)?;
    let name_at = |off: usize| -> &[u8] {
        let s = strings.get(off..).unwrap_or_default();
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    };
    let (mut at, mut id) = (0usize, 1u32);
    while at < types.len() {
        let (Some(name_off), Some(info)) = (u32_at(types, at), u32_at(types, at + 4)) else {
            return Err(BtfFuncError::Truncated { id });
        };
        let kind = (info >> 24) & 0x1f;
        if kind == want && name_at(name_off as usize) == name.as_bytes() {
            return Ok(Some(id));
        }
        let more = extra(kind, (info & 0xffff) as usize).ok_or(BtfFuncError::Kind { id, kind })?;
        at += 12 + more;
        id += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: INT "int", STRUCT "s" with 2 members, FUNC_PROTO with 1 param, FUNC "f".
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0f\0".to_vec();
        let mut t = Vec::new();
        let ty = |t: &mut Vec<u8>, name: u32, kind: u32, vlen: u32, size: u32| {
            t.extend_from_slice(&name.to_ne_bytes());
            t.extend_from_slice(&((kind << 24) | vlen).to_ne_bytes());
            t.extend_from_slice(&size.to_ne_bytes());
        };
        ty(&mut t, 1, 1, 0, 4);
        t.extend_from_slice(&[0; 4]);
        ty(&mut t, 5, 4, 2, 8);
        t.extend_from_slice(&[0; 24]);
        ty(&mut t, 0, 13, 1, 1);
        t.extend_from_slice(&[0; 8]);
        ty(&mut t, 7, 12, 0, 3);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_ne_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_funcs_by_name_only() {
        let b = blob();
        assert_eq!(func_id(&b, "f"), Ok(Some(4)));
        assert_eq!(func_id(&b, "s"), Ok(None), "a struct is not a function");
        assert_eq!(func_id(&b, "nope"), Ok(None));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(func_id(b"hello", "f"), Err(BtfFuncError::Header));
        let mut b = blob();
        b[24 + 7] = 31; // first type: kind 31
        assert_eq!(func_id(&b, "f"), Err(BtfFuncError::Kind { id: 1, kind: 31 }));
    }

    #[test]
    fn agrees_with_btf_rs_on_this_kernel() {
        let path = crate::kernel::btf::vmlinux_path();
        let Ok(raw) = std::fs::read(&path) else { return };
        let btf = btf_rs::Btf::from_bytes(&raw).unwrap();
        for name in ["tcp_v4_connect", "tcp_close"] {
            let want = btf
                .resolve_ids_by_name(name)
                .unwrap()
                .into_iter()
                .find(|id| matches!(btf.resolve_type_by_id(*id), Ok(btf_rs::Type::Func(_))));
            assert_eq!(func_id(&raw, name).unwrap(), want, "{name}");
        }
        let want = btf
            .resolve_ids_by_name("btf_trace_inet_sock_set_state")
            .unwrap()
            .into_iter()
            .find(|id| matches!(btf.resolve_type_by_id(*id), Ok(btf_rs::Type::Typedef(_))));
        assert!(want.is_some());
        assert_eq!(tracepoint_id(&raw, "inet_sock_set_state").unwrap(), want);
        assert_eq!(tracepoint_id(&raw, "tcp_close").unwrap(), None, "a function is not a tracepoint");
    }
}
