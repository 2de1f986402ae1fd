//! Kernel text addresses to function names, from `/proc/kallsyms`.
//!
//! `kfree_skb`'s `location` is a return address inside the dropping function
//! (`ip_error+0x94`); metrics carry the function name only, so every call site in one
//! function is one series and the label stays low-cardinality.
//!
//! Modules loaded after start (br_netfilter, nf_tables when dockerd or firewalld starts
//! later) are not in a table read once: their addresses would be named after the last
//! symbol below them, another module's. So the table is read again whenever the set of
//! loaded modules changes, checked at most once a second from `/proc/modules` (name,
//! size, state and load address of each; not the use counts, which change with every
//! firewall rule). Both files are read through descriptors opened at start, while
//! dropgate still has CAP_SYSLOG: the kernel decides whether to show real addresses
//! from the credentials the file was *opened* with (`kallsyms_show_value(file->f_cred)`
//! in both), so re-reading from offset 0 after CAP_SYSLOG is gone still shows them,
//! while a fresh open would show only zeros (checked on 6.18).

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read as _, Seek as _, SeekFrom},
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

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

/// How often, at most, `/proc/modules` is compared with what the table was read for.
const MODULE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A sorted table of kernel text symbols without their names: the kernel has some
/// 120,000 of them and the table stays resident, while drops happen in a few dozen
/// functions. Each symbol costs its address and its place in the file (12 bytes; with
/// the names kept it was 4.4 MB on 6.18); a name is read from the file the first time a
/// drop is located in its function, and kept.
#[derive(Debug, Default)]
struct SymbolTable {
    /// Start addresses, sorted.
    addresses: Vec<u64>,
    /// Each symbol's place among the text symbols in the file's order.
    ordinals: Vec<u32>,
    /// Names read so far, by index in `addresses`.
    names: Mutex<HashMap<u32, Arc<str>>>,
}

/// The text symbols of kallsyms text, in the file's order: (address, name).
fn text_symbols(
    mut input: impl BufRead,
    mut each: impl FnMut(u64, &str) -> bool,
) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(address), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(address) = u64::from_str_radix(address, 16) else {
            continue;
        };
        if address == 0 || !matches!(kind, "t" | "T") {
            continue;
        }
        if !each(address, name) {
            return Ok(());
        }
    }
}

impl SymbolTable {
    #[cfg(test)]
    fn parse(text: &str) -> Self {
        Self::read(text.as_bytes()).unwrap_or_default()
    }

    /// Reads kallsyms text line by line, never holding the whole file (5 MB and more).
    fn read(input: impl BufRead) -> std::io::Result<Self> {
        let mut found: Vec<(u64, u32)> = Vec::new();
        text_symbols(input, |address, _| {
            found.push((address, found.len() as u32));
            true
        })?;
        found.sort_unstable_by_key(|(address, _)| *address);
        Ok(Self {
            addresses: found.iter().map(|(address, _)| *address).collect(),
            ordinals: found.iter().map(|(_, ordinal)| *ordinal).collect(),
            names: Mutex::default(),
        })
    }

    fn len(&self) -> usize {
        self.addresses.len()
    }

    /// The index of the function containing `address`.
    fn index_at(&self, address: u64) -> Option<usize> {
        self.addresses
            .partition_point(|start| *start <= address)
            .checked_sub(1)
    }

    /// Reads the names of every symbol of `indexes` not known yet in one pass over
    /// `input` (one read of the file for a whole scrape's new functions).
    fn learn<'a>(&self, indexes: &[usize], input: impl FnOnce() -> Option<Box<dyn BufRead + 'a>>) {
        let mut names = self.names.lock().expect("symbol names lock");
        let wanted: HashMap<u32, usize> = indexes
            .iter()
            .filter(|index| !names.contains_key(&(**index as u32)))
            .map(|index| (self.ordinals[*index], *index))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Some(input) = input() else {
            return;
        };
        let (mut ordinal, mut left) = (0, wanted.len());
        let _ = text_symbols(input, |at, name| {
            if let Some(index) = wanted.get(&ordinal) {
                if self.addresses[*index] == at {
                    names.insert(*index as u32, Arc::from(name));
                }
                left -= 1;
            }
            ordinal += 1;
            left > 0
        });
    }

    /// The name of symbol `index`, read from `input` (the text the table was read
    /// from) unless known; `None` when the text no longer has that symbol there.
    fn name<'a>(
        &self,
        index: usize,
        input: impl FnOnce() -> Option<Box<dyn BufRead + 'a>>,
    ) -> Option<Arc<str>> {
        let mut names = self.names.lock().expect("symbol names lock");
        if let Some(name) = names.get(&(index as u32)) {
            return Some(Arc::clone(name));
        }
        let (wanted, address) = (self.ordinals[index], self.addresses[index]);
        let mut ordinal = 0;
        let mut found = None;
        text_symbols(input()?, |at, name| {
            if ordinal == wanted {
                found = (at == address).then(|| Arc::<str>::from(name));
                return false;
            }
            ordinal += 1;
            true
        })
        .ok()?;
        let found = found?;
        names.insert(index as u32, Arc::clone(&found));
        Some(found)
    }
}

/// What identifies the set of loaded modules in `/proc/modules`: per line the name,
/// size, state and load address, without the use count and users, which change with
/// every rule that uses a module.
#[must_use]
pub fn modules_fingerprint(text: &str) -> Vec<[&str; 4]> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            Some(
                [
                    fields.first()?,
                    fields.get(1)?,
                    fields.get(4)?,
                    fields.get(5)?,
                ]
                .map(|f| *f),
            )
        })
        .collect()
}

/// The descriptors the table is re-read through, and what it was last read for.
struct Source {
    kallsyms: File,
    kallsyms_path: String,
    /// `None` on kernels without loadable modules (no `/proc/modules`): nothing to follow.
    modules: Option<File>,
    /// `/proc/modules` as of the last read of the table.
    modules_text: String,
    checked: Instant,
    interval: Duration,
}

/// Reads the whole file again from its start, through the same descriptor.
fn reread(file: &mut File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Reads the symbol table again from the file's start, through the same descriptor.
fn reread_table(file: &mut File) -> std::io::Result<SymbolTable> {
    file.seek(SeekFrom::Start(0))?;
    SymbolTable::read(BufReader::with_capacity(64 * 1024, file))
}

/// The kernel's text symbols, kept up to date with the loaded modules.
pub struct Kallsyms {
    table: RwLock<Arc<SymbolTable>>,
    source: Option<Mutex<Source>>,
    /// The text of a table made by [`Self::parse`] (no file to read names from).
    text: Option<String>,
}

impl Kallsyms {
    /// Opens `/proc/kallsyms` and `/proc/modules` and keeps them open for later
    /// re-reads (call while CAP_SYSLOG is still effective).
    pub fn load() -> Result<Self, KallsymsError> {
        Self::open(
            Path::new("/proc/kallsyms"),
            Some(Path::new("/proc/modules")),
            MODULE_CHECK_INTERVAL,
        )
    }

    /// Loads a kallsyms-format file once (no module tracking).
    pub fn from_file(path: &Path) -> Result<Self, KallsymsError> {
        Self::open(path, None, MODULE_CHECK_INTERVAL)
    }

    /// Opens `kallsyms` and, if it exists, `modules`, reads the table, and re-reads it
    /// when `modules` changes, checked at most every `interval`.
    pub fn open(
        kallsyms: &Path,
        modules: Option<&Path>,
        interval: Duration,
    ) -> Result<Self, KallsymsError> {
        let kallsyms_path = kallsyms.display().to_string();
        let read_error = |source| KallsymsError::Read {
            path: kallsyms_path.clone(),
            source,
        };
        let mut file = File::open(kallsyms).map_err(read_error)?;
        // Absent on kernels built without module support; then nothing ever changes.
        let mut modules = modules.and_then(|path| File::open(path).ok());
        let modules_text = match &mut modules {
            Some(file) => reread(file).unwrap_or_default(),
            None => String::new(),
        };
        let table = reread_table(&mut file).map_err(read_error)?;
        if table.len() == 0 {
            return Err(KallsymsError::Hidden {
                path: kallsyms_path,
            });
        }
        Ok(Self {
            table: RwLock::new(Arc::new(table)),
            source: Some(Mutex::new(Source {
                kallsyms: file,
                kallsyms_path,
                modules,
                modules_text,
                checked: Instant::now(),
                interval,
            })),
            text: None,
        })
    }

    /// Parses kallsyms text, keeping text (code) symbols with a non-zero address.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        Self {
            table: RwLock::new(Arc::new(
                SymbolTable::read(text.as_bytes()).unwrap_or_default(),
            )),
            source: None,
            text: Some(text.to_owned()),
        }
    }

    /// Re-reads the table if the loaded modules changed since it was read (at most one
    /// check per interval; a check another thread is doing is not waited for).
    pub fn refresh_if_modules_changed(&self) {
        let Some(source) = &self.source else {
            return;
        };
        let Ok(mut source) = source.try_lock() else {
            return;
        };
        if source.checked.elapsed() < source.interval {
            return;
        }
        source.checked = Instant::now();
        let Some(modules) = &mut source.modules else {
            return;
        };
        let now = match reread(modules) {
            Ok(text) => text,
            Err(err) => {
                tracing::debug!("cannot re-read /proc/modules: {err}");
                return;
            }
        };
        if modules_fingerprint(&now) == modules_fingerprint(&source.modules_text) {
            return;
        }
        match reread_table(&mut source.kallsyms) {
            Ok(table) => {
                if table.len() == 0 {
                    tracing::warn!(
                        "{} re-read without addresses; keeping the old table",
                        source.kallsyms_path
                    );
                    return;
                }
                tracing::info!(
                    symbols = table.len(),
                    "loaded kernel modules changed: kernel symbols re-read"
                );
                *self.table.write().expect("kallsyms lock") = Arc::new(table);
                source.modules_text = now;
            }
            Err(err) => tracing::warn!("cannot re-read {}: {err}", source.kallsyms_path),
        }
    }

    /// The function containing `address`, if it falls inside the kernel's text.
    #[must_use]
    pub fn function_at(&self, address: u64) -> Option<Arc<str>> {
        self.refresh_if_modules_changed();
        let table = Arc::clone(&self.table.read().expect("kallsyms lock"));
        let index = table.index_at(address)?;
        if let Some(text) = &self.text {
            return table.name(index, || Some(Box::new(text.as_bytes())));
        }
        let mut source = self.source.as_ref()?.lock().expect("kallsyms source lock");
        // A name is missing where the table has it only if the file changed since it
        // was read (modules came or went): the refresh catches up within a second.
        table.name(index, || {
            source.kallsyms.seek(SeekFrom::Start(0)).ok()?;
            Some(Box::new(BufReader::with_capacity(
                64 * 1024,
                &mut source.kallsyms,
            )))
        })
    }

    /// Reads the names of the functions of all these addresses that are not known yet,
    /// in one pass over the file: a scrape that meets many new functions reads it once.
    pub fn learn(&self, addresses: impl Iterator<Item = u64>) {
        self.refresh_if_modules_changed();
        let table = Arc::clone(&self.table.read().expect("kallsyms lock"));
        let mut indexes: Vec<usize> = addresses.filter_map(|a| table.index_at(a)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        if let Some(text) = &self.text {
            table.learn(&indexes, || Some(Box::new(text.as_bytes())));
            return;
        }
        let Some(source) = &self.source else {
            return;
        };
        let mut source = source.lock().expect("kallsyms source lock");
        table.learn(&indexes, || {
            source.kallsyms.seek(SeekFrom::Start(0)).ok()?;
            Some(Box::new(BufReader::with_capacity(
                64 * 1024,
                &mut source.kallsyms,
            )))
        });
    }

    /// The label for `address`: its function, or the address in hex if it is in none.
    #[must_use]
    pub fn name_at(&self, address: u64) -> String {
        self.function_at(address)
            .map_or_else(|| format!("{address:#x}"), |name| name.to_string())
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
            assert_eq!(table.function_at(address).as_deref(), want, "case {name}");
        }
        let learned = Kallsyms::parse(SAMPLE);
        learned.learn(cases.iter().map(|(_, address, _)| *address));
        let known = learned
            .table
            .read()
            .expect("lock")
            .names
            .lock()
            .expect("lock")
            .len();
        assert_eq!(
            known, 3,
            "one pass learned every function asked for (three)"
        );
        for (name, address, want) in cases {
            assert_eq!(
                learned.function_at(address).as_deref(),
                want,
                "learned: case {name}"
            );
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

    #[test]
    fn module_fingerprint_ignores_use_counts() {
        let before = "nf_tables 364544 3 nft_compat, Live 0xffffffffc0a00000\n\
                      libcrc32c 12288 1 nf_tables, Live 0xffffffffc0900000\n";
        let cases = [
            (
                "a rule starts using a module",
                "nf_tables 364544 9 nft_compat,nft_chain_nat, Live 0xffffffffc0a00000\n\
                 libcrc32c 12288 1 nf_tables, Live 0xffffffffc0900000\n",
                true,
            ),
            (
                "a module is loaded",
                "br_netfilter 32768 0 - Live 0xffffffffc0b00000\n\
                 nf_tables 364544 3 nft_compat, Live 0xffffffffc0a00000\n\
                 libcrc32c 12288 1 nf_tables, Live 0xffffffffc0900000\n",
                false,
            ),
            (
                "a module finished loading",
                "nf_tables 364544 3 nft_compat, Loading 0xffffffffc0a00000\n\
                 libcrc32c 12288 1 nf_tables, Live 0xffffffffc0900000\n",
                false,
            ),
            (
                "unloaded and loaded again elsewhere",
                "nf_tables 364544 3 nft_compat, Live 0xffffffffc0c00000\n\
                 libcrc32c 12288 1 nf_tables, Live 0xffffffffc0900000\n",
                false,
            ),
        ];
        for (name, after, same) in cases {
            assert_eq!(
                modules_fingerprint(before) == modules_fingerprint(after),
                same,
                "case {name}"
            );
        }
    }

    /// A module loaded after start: its addresses first fall after the last symbol of
    /// the table read at start (another module's), and after the refresh get its own.
    #[test]
    fn a_module_loaded_later_gets_its_own_symbols_after_the_refresh() {
        let dir =
            std::env::temp_dir().join(format!("dropgate-kallsyms-refresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let kallsyms = dir.join("kallsyms");
        let modules = dir.join("modules");
        std::fs::write(&kallsyms, SAMPLE).expect("write kallsyms");
        std::fs::write(&modules, "nf_tables 364544 0 - Live 0xffffffffc0001000\n")
            .expect("write modules");
        let table = Kallsyms::open(&kallsyms, Some(&modules), Duration::ZERO)
            .expect("the sample has addresses");
        let in_new_module = 0xffff_ffff_c000_5010;
        assert_eq!(
            table.function_at(in_new_module).as_deref(),
            Some("nft_do_chain"),
            "before the module is known, its address reads as the last symbol below it"
        );

        // Only a use count changes: no re-read (the file gains a symbol that must not
        // show up yet, which proves the table was not read again).
        let mut later = SAMPLE.to_owned();
        later.push_str("ffffffffc0005000 t br_nf_pre_routing_finish\t[br_netfilter]\n");
        std::fs::write(&kallsyms, &later).expect("rewrite kallsyms");
        std::fs::write(
            &modules,
            "nf_tables 364544 4 nft_compat, Live 0xffffffffc0001000\n",
        )
        .expect("rewrite modules");
        assert_eq!(
            table.function_at(in_new_module).as_deref(),
            Some("nft_do_chain"),
            "a use count change does not re-read the table"
        );

        // The module appears in /proc/modules: the table is read again.
        std::fs::write(
            &modules,
            "br_netfilter 32768 0 - Live 0xffffffffc0005000\n\
             nf_tables 364544 4 nft_compat, Live 0xffffffffc0001000\n",
        )
        .expect("rewrite modules");
        assert_eq!(
            table.function_at(in_new_module).as_deref(),
            Some("br_nf_pre_routing_finish")
        );
        assert_eq!(
            table.name_at(0x1000),
            "0x1000",
            "outside all text: the address"
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }

    #[test]
    fn without_module_support_nothing_is_re_read() {
        let dir =
            std::env::temp_dir().join(format!("dropgate-kallsyms-nomod-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let kallsyms = dir.join("kallsyms");
        std::fs::write(&kallsyms, SAMPLE).expect("write kallsyms");
        let table = Kallsyms::open(
            &kallsyms,
            Some(&dir.join("no-such-modules")),
            Duration::ZERO,
        )
        .expect("the sample has addresses");
        // A symbol that a re-read table would find first (names are read lazily, by
        // their place in the file, so it goes after the others).
        let mut later = SAMPLE.to_owned();
        later.push_str("ffffffff81a00008 t renamed\n");
        std::fs::write(&kallsyms, later).expect("rewrite kallsyms");
        assert_eq!(
            table.function_at(0xffff_ffff_81a0_0010).as_deref(),
            Some("ip_error")
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }

    /// The kernel fact the refresh rests on: whether addresses are shown is decided
    /// when the file is opened, so a descriptor opened with CAP_SYSLOG keeps showing
    /// them after the capability is gone. Runs on a thread of its own: capabilities
    /// are per thread, and the drop ends with it.
    #[test]
    fn a_descriptor_opened_with_cap_syslog_shows_addresses_after_the_drop() {
        use caps::{CapSet, Capability};
        std::thread::spawn(|| {
            if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYSLOG).unwrap_or(false) {
                eprintln!("SKIP: needs CAP_SYSLOG (run as root)");
                return;
            }
            let mut file = File::open("/proc/kallsyms").expect("open /proc/kallsyms");
            let before = SymbolTable::parse(&reread(&mut file).expect("read")).len();
            if before == 0 {
                eprintln!("SKIP: kernel.kptr_restrict=2 hides addresses even from root");
                return;
            }
            caps::drop(None, CapSet::Effective, Capability::CAP_SYSLOG)
                .expect("drop CAP_SYSLOG on this thread");
            let fresh = std::fs::read_to_string("/proc/kallsyms").expect("open again");
            let fresh = SymbolTable::parse(&fresh).len();
            let again = SymbolTable::parse(&reread(&mut file).expect("re-read")).len();
            eprintln!("text symbols: {before} at open, {again} re-read after the drop, {fresh} on a fresh open");
            // Not an exact count: BPF programs (other tests, other tools on the host)
            // come and go in /proc/kallsyms between the two reads. Without the
            // capability a read would show no address at all.
            assert!(
                again >= before - before / 100,
                "the descriptor opened with CAP_SYSLOG still shows the addresses \
                 ({again} of {before})"
            );
        })
        .join()
        .expect("the capability thread");
    }
}
