//! A small reader of the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs are built without CO-RE relocations, so every struct offset they
//! use is looked up here at start-up and handed to them as a global. The same data names
//! the drop reasons: `enum skb_drop_reason` is renumbered between kernel versions and
//! distro backports, so a hard-coded table would be wrong somewhere.
//!
//! Only what dropgate needs is decoded: type kinds, struct/union members (through
//! anonymous members at any depth), enums and typedef'd function prototypes.

use std::{collections::HashMap, path::Path};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors reading or querying BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error(
        "cannot read kernel BTF at {path}: {source}; the kernel needs CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The data is not BTF or is cut short.
    #[error("kernel BTF at {path} is malformed: {why}")]
    Malformed { path: String, why: String },
    /// A type dropgate needs is not in this kernel's BTF.
    #[error("kernel BTF has no {kind} named `{name}`")]
    MissingType { kind: &'static str, name: String },
    /// A struct lacks a member dropgate needs.
    #[error("kernel BTF: `struct {strukt}` has no member `{member}`")]
    MissingMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One decoded type; `extra` is the kind-specific trailing data, still raw.
#[derive(Debug, Clone, Copy)]
struct RawType {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    extra: usize,
}

impl RawType {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kflag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// A struct or union member.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    /// Offset from the start of the containing type, in bits.
    pub bit_offset: u32,
}

/// Parsed BTF: types by id and names, ready for offset and enum queries.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Index 0 is the implicit `void`.
    types: Vec<RawType>,
    by_name: HashMap<(u32, String), u32>,
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data).map_err(|why| BtfError::Malformed {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses BTF bytes; the error says what is wrong with them (for a message that
    /// names the file, use [`Self::from_file`]).
    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let u16_at = |off: usize| -> Result<u16, String> {
            data.get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| format!("cut short at byte {off}"))
        };
        let u32_at = |off: usize| -> Result<u32, String> {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("cut short at byte {off}"))
        };
        if u16_at(0)? != 0xeb9f {
            return Err("bad magic (only little-endian BTF is supported)".into());
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err("section lengths exceed the file".into());
        }
        let mut types = vec![RawType {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        }];
        let mut pos = types_start;
        while pos < types_end {
            let raw = RawType {
                name_off: u32_at(pos)?,
                info: u32_at(pos + 4)?,
                size_or_type: u32_at(pos + 8)?,
                extra: pos + 12,
            };
            let extra_len = match raw.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * raw.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * raw.vlen(),
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => return Err(format!("unknown BTF kind {other} at byte {pos}")),
            };
            types.push(raw);
            pos = raw.extra + extra_len;
            if pos > types_end {
                return Err(format!(
                    "the type at byte {} runs past the end of the type section",
                    raw.extra - 12
                ));
            }
        }
        let mut btf = Self {
            data,
            strings,
            types,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let raw = btf.types[id];
            if raw.name_off != 0 {
                let name = btf.str_at(raw.name_off).to_owned();
                // First definition wins; later ones with the same kind and name are
                // duplicates from different compilation units.
                btf.by_name
                    .entry((raw.kind(), name))
                    .or_insert(u32::try_from(id).map_err(|_| "too many types")?);
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let start = self.strings.start + off as usize;
        let bytes = &self.data[start.min(self.strings.end)..self.strings.end];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().expect("4 bytes"))
    }

    fn raw(&self, id: u32) -> Option<RawType> {
        self.types.get(id as usize).copied()
    }

    /// The id of the struct named `name`.
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .copied()
            .ok_or_else(|| BtfError::MissingType {
                kind: "struct",
                name: name.to_owned(),
            })
    }

    /// The id of the function named `name` (a kernel function with BTF, e.g. a kfunc).
    #[must_use]
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(&(KIND_FUNC, name.to_owned())).copied()
    }

    fn members(&self, id: u32) -> Vec<Member> {
        let Some(raw) = self.raw(id) else {
            return Vec::new();
        };
        if !matches!(raw.kind(), KIND_STRUCT | KIND_UNION) {
            return Vec::new();
        }
        (0..raw.vlen())
            .map(|i| {
                let at = raw.extra + 12 * i;
                let offset = self.u32_at(at + 8);
                Member {
                    name: self.str_at(self.u32_at(at)).to_owned(),
                    type_id: self.u32_at(at + 4),
                    // With kflag set the top 8 bits hold a bitfield size.
                    bit_offset: if raw.kflag() {
                        offset & 0x00ff_ffff
                    } else {
                        offset
                    },
                }
            })
            .collect()
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.raw(id) {
                Some(raw)
                    if matches!(
                        raw.kind(),
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = raw.size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    /// Finds `member` directly in the struct/union `id` or inside its anonymous members.
    /// Returns (bit offset, member type id).
    fn find_member(&self, id: u32, member: &str) -> Option<(u32, u32)> {
        self.find_member_within(id, member, 0)
    }

    /// [`Self::find_member`] at a nesting `depth` of anonymous members: real kernels nest
    /// a few levels, and a bound keeps a member that contains itself from recursing on.
    fn find_member_within(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        const MAX_ANONYMOUS_DEPTH: u32 = 32;
        for m in self.members(self.resolve(id)) {
            if m.name == member {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name.is_empty() && depth < MAX_ANONYMOUS_DEPTH {
                if let Some((inner, type_id)) =
                    self.find_member_within(m.type_id, member, depth + 1)
                {
                    return Some((m.bit_offset.saturating_add(inner), type_id));
                }
            }
        }
        None
    }

    /// Byte offset of a dotted member path (`"ns.inum"`, `"__sk_common.skc_net"`) inside
    /// `struct strukt`, looking through anonymous structs and unions.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut id = self.struct_id(strukt)?;
        let mut bits: u32 = 0;
        for part in path.split('.') {
            let (offset, type_id) =
                self.find_member(id, part)
                    .ok_or_else(|| BtfError::MissingMember {
                        strukt: strukt.to_owned(),
                        member: path.to_owned(),
                    })?;
            bits = bits.saturating_add(offset);
            id = type_id;
        }
        Ok(bits / 8)
    }

    /// All values of the enum named `name` (plain or 64-bit), as (name, value).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, BtfError> {
        let id = self
            .by_name
            .get(&(KIND_ENUM, name.to_owned()))
            .or_else(|| self.by_name.get(&(KIND_ENUM64, name.to_owned())))
            .copied()
            .ok_or_else(|| BtfError::MissingType {
                kind: "enum",
                name: name.to_owned(),
            })?;
        let raw = self.raw(id).expect("id from the index");
        let values = (0..raw.vlen())
            .map(|i| {
                if raw.kind() == KIND_ENUM {
                    let at = raw.extra + 8 * i;
                    (
                        self.str_at(self.u32_at(at)).to_owned(),
                        u64::from(self.u32_at(at + 4)),
                    )
                } else {
                    let at = raw.extra + 12 * i;
                    let value =
                        u64::from(self.u32_at(at + 4)) | (u64::from(self.u32_at(at + 8)) << 32);
                    (self.str_at(self.u32_at(at)).to_owned(), value)
                }
            })
            .collect();
        Ok(values)
    }

    /// Number of parameters of the function prototype behind the typedef `name`
    /// (`btf_trace_<tracepoint>` typedefs are pointers to such prototypes; their first
    /// parameter is the tracepoint's private `void *`).
    pub fn typedef_fn_params(&self, name: &str) -> Result<usize, BtfError> {
        let missing = || BtfError::MissingType {
            kind: "typedef",
            name: name.to_owned(),
        };
        let id = *self
            .by_name
            .get(&(KIND_TYPEDEF, name.to_owned()))
            .ok_or_else(missing)?;
        let mut id = self.resolve(id);
        if self.raw(id).is_some_and(|r| r.kind() == KIND_PTR) {
            id = self.resolve(self.raw(id).expect("checked").size_or_type);
        }
        match self.raw(id) {
            Some(raw) if raw.kind() == KIND_FUNC_PROTO => Ok(raw.vlen()),
            _ => Err(missing()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only meaningful where the kernel exposes BTF (every kernel dropgate supports).
    fn kernel_btf() -> Option<Btf> {
        Path::new(VMLINUX_BTF)
            .exists()
            .then(|| Btf::from_sys_fs().expect("kernel BTF parses"))
    }

    #[test]
    fn finds_sk_buff_members_through_anonymous_unions() {
        let Some(btf) = kernel_btf() else {
            eprintln!("SKIP: no {VMLINUX_BTF}");
            return;
        };
        let dev = btf.member_offset("sk_buff", "dev").expect("sk_buff.dev");
        let len = btf.member_offset("sk_buff", "len").expect("sk_buff.len");
        let head = btf.member_offset("sk_buff", "head").expect("sk_buff.head");
        // Layout facts that hold on every kernel since 4.x: dev sits in the first cache
        // line after next/prev, len and head further down; all are 4/8-byte aligned.
        assert_eq!(dev, 16, "dev follows next and prev");
        assert!(
            len > dev && head > len,
            "len ({len}) and head ({head}) come after dev"
        );
        assert_eq!(head % 8, 0, "head is a pointer");
        let inum = btf.member_offset("net", "ns.inum").expect("net.ns.inum");
        assert_eq!(inum % 4, 0);
    }

    #[test]
    fn missing_names_are_errors_that_say_what() {
        let Some(btf) = kernel_btf() else {
            eprintln!("SKIP: no {VMLINUX_BTF}");
            return;
        };
        let err = btf
            .member_offset("sk_buff", "no_such_field")
            .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "kernel BTF: `struct sk_buff` has no member `no_such_field`"
        );
        assert!(btf.struct_id("no_such_struct_dropgate").is_err());
    }

    #[test]
    fn drop_reasons_come_from_the_kernel_enum() {
        let Some(btf) = kernel_btf() else {
            eprintln!("SKIP: no {VMLINUX_BTF}");
            return;
        };
        let Ok(values) = btf.enum_values("skb_drop_reason") else {
            eprintln!("SKIP: this kernel predates enum skb_drop_reason");
            return;
        };
        let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"SKB_DROP_REASON_NOT_SPECIFIED"));
        assert!(names.contains(&"SKB_DROP_REASON_IP_INADDRERRORS"));
        let params = btf
            .typedef_fn_params("btf_trace_kfree_skb")
            .expect("kfree_skb typedef");
        // void *, skb, location, reason (and rx_sk from 6.11 on).
        assert!(
            params >= 4,
            "kfree_skb has a reason argument here ({params} params)"
        );
    }

    /// A little-endian BTF blob: header, `types` (raw words), then `strings`.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_len = u32::try_from(types.len() * 4).expect("small");
        let str_len = u32::try_from(strings.len()).expect("small");
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for word in [24, 0, type_len, type_len, str_len] {
            data.extend_from_slice(&u32::to_le_bytes(word));
        }
        for word in types {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(strings);
        data
    }

    /// `info` of a struct with `vlen` members.
    fn struct_info(vlen: u32) -> u32 {
        (KIND_STRUCT << 24) | vlen
    }

    #[test]
    fn types_running_past_their_section_are_malformed() {
        // `struct s` says it has 3 members but the section ends after its header.
        let data = blob(&[1, struct_info(3), 8], b"\0s\0");
        let err = Btf::parse(data).err().expect("members past the end");
        assert!(err.contains("past the end of the type section"), "{err}");
    }

    #[test]
    fn anonymous_members_that_loop_end_the_search() {
        // `struct s { struct s; }`: an anonymous member of its own type, as crafted BTF
        // could say; looking for a member must end, not recurse forever.
        let data = blob(&[1, struct_info(1), 8, 0, 1, 0], b"\0s\0");
        let btf = Btf::parse(data).expect("well-formed, if absurd");
        let err = btf.member_offset("s", "x").expect_err("no member x");
        assert!(matches!(err, BtfError::MissingMember { .. }), "{err}");
    }

    #[test]
    fn rejects_data_that_is_not_btf() {
        let err = Btf::parse(vec![0u8; 64]).err().expect("zeros are not BTF");
        assert!(err.contains("magic"), "{err}");
        let err = Btf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0])
            .err()
            .expect("cut short");
        assert!(err.contains("cut short"), "{err}");
    }
}
