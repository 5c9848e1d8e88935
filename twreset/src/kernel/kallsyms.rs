//! Kernel function addresses from /proc/kallsyms: the TIME_WAIT timer handler, the ranges used
//! to recognise an early TIME_WAIT removal, and address-to-function resolution for its cause.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/kallsyms shows zero addresses: run as root (kernel.kptr_restrict hides them)")]
    Hidden,
    #[error("kernel symbol {name} not found in /proc/kallsyms")]
    Missing { name: String },
}

/// Text symbols, sorted by address.
pub struct Kallsyms {
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> Result<Self, KallsymsError> {
        Self::from_path(Path::new("/proc/kallsyms"))
    }

    pub fn from_path(path: &Path) -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KallsymsError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parse kallsyms text; only text symbols (`t`/`T`) are kept, module suffixes dropped.
    pub fn parse(text: &str) -> Result<Self, KallsymsError> {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                matches!(kind, "t" | "T").then(|| (addr, name.to_owned()))
            })
            .collect();
        if !syms.is_empty() && syms.iter().all(|(a, _)| *a == 0) {
            return Err(KallsymsError::Hidden);
        }
        syms.sort_unstable();
        Ok(Self { syms })
    }

    /// `[start, end)` of function `name` (end = the next symbol's start).
    pub fn range(&self, name: &str) -> Result<(u64, u64), KallsymsError> {
        let i = self
            .syms
            .iter()
            .position(|(_, n)| n == name)
            .ok_or_else(|| KallsymsError::Missing { name: name.to_owned() })?;
        let start = self.syms[i].0;
        let end = self.syms[i + 1..].iter().map(|(a, _)| *a).find(|a| *a > start).unwrap_or(start + 1);
        Ok((start, end))
    }

    /// Name of the function containing `addr`.
    pub fn resolve(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        (i > 0).then(|| self.syms[i - 1].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff82003430 t tw_timer_handler
ffffffff82003460 T inet_twsk_deschedule_put
ffffffff820034c0 T inet_twsk_free
ffffffff820087e0 T tcp_abort
ffffffff82009000 d some_data
ffffffffc0000000 t helper\t[somemod]
";

    #[test]
    fn ranges_and_resolution() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        assert_eq!(k.range("inet_twsk_deschedule_put").unwrap(), (0xffffffff82003460, 0xffffffff820034c0));
        assert_eq!(k.resolve(0xffffffff820034a0), Some("inet_twsk_deschedule_put"));
        assert_eq!(k.resolve(0xffffffff82008800), Some("tcp_abort"));
        assert_eq!(k.resolve(0x10), None);
        assert!(matches!(k.range("nope"), Err(KallsymsError::Missing { .. })));
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let hidden = "0000000000000000 T tcp_abort\n0000000000000000 t tw_timer_handler\n";
        assert!(matches!(Kallsyms::parse(hidden), Err(KallsymsError::Hidden)));
    }
}
