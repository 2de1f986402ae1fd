//! Kernel text addresses to function names, from `/proc/kallsyms`.
//!
//! `kfree_skb`'s `location` is a return address inside the dropping function
//! (`ip_error+0x94`); metrics carry the function name only, so every call site in one
//! function is one series and the label stays low-cardinality.

use std::path::Path;

/// Errors loading the symbol table.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Every address is zero: `kernel.kptr_restrict` hides them from this process.
    #[error(
        "{path} shows only zero addresses; run as root with CAP_SYSLOG, or set `sysctl kernel.kptr_restrict=0`"
    )]
    Hidden { path: String },
}

/// A sorted table of kernel text symbols.
pub struct Kallsyms {
    /// (address, name), sorted by address.
    symbols: Vec<(u64, Box<str>)>,
}

impl Kallsyms {
    /// Loads `/proc/kallsyms`.
    pub fn load() -> Result<Self, KallsymsError> {
        Self::from_file(Path::new("/proc/kallsyms"))
    }

    /// Loads a kallsyms-format file.
    pub fn from_file(path: &Path) -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let table = Self::parse(&text);
        if table.symbols.is_empty() {
            return Err(KallsymsError::Hidden {
                path: path.display().to_string(),
            });
        }
        Ok(table)
    }

    /// Parses kallsyms text, keeping text (code) symbols with a non-zero address.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, Box<str>)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.into()))
            })
            .collect();
        symbols.sort_unstable_by_key(|(address, _)| *address);
        Self { symbols }
    }

    /// The function containing `address`, if it falls inside the kernel's text.
    #[must_use]
    pub fn function_at(&self, address: u64) -> Option<&str> {
        let index = self.symbols.partition_point(|(start, _)| *start <= address);
        index.checked_sub(1).map(|i| &*self.symbols[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81a00000 t ip_error
ffffffff81a00200 T ip_forward
ffffffff81a00400 d some_data
ffffffffc0001000 t nft_do_chain\t[nf_tables]
";

    #[test]
    fn maps_addresses_to_the_enclosing_function() {
        let table = Kallsyms::parse(SAMPLE);
        let cases = [
            ("function start", 0xffff_ffff_81a0_0000, Some("ip_error")),
            ("call site inside", 0xffff_ffff_81a0_0094, Some("ip_error")),
            ("next function", 0xffff_ffff_81a0_0200, Some("ip_forward")),
            (
                "data symbols are skipped",
                0xffff_ffff_81a0_0400,
                Some("ip_forward"),
            ),
            ("module symbol", 0xffff_ffff_c000_1010, Some("nft_do_chain")),
            ("below all text", 0x1000, None),
        ];
        for (name, address, want) in cases {
            assert_eq!(table.function_at(address), want, "case {name}");
        }
    }

    #[test]
    fn zero_addresses_mean_hidden() {
        let dir = std::env::temp_dir().join(format!("dropgate-kallsyms-{}", std::process::id()));
        std::fs::write(&dir, "0000000000000000 T ip_error\n").expect("write temp file");
        let err = Kallsyms::from_file(&dir)
            .err()
            .expect("hidden addresses are an error");
        std::fs::remove_file(&dir).expect("remove temp file");
        assert!(err.to_string().contains("kptr_restrict"), "{err}");
    }
}
