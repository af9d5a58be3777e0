//! Byte offsets of kernel struct fields, read from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux), for an eBPF program that must read a field no helper
//! exposes (`lb_splice` and `copied_seq`). Only what that needs: struct and union members,
//! anonymous ones included; little-endian BTF.

use std::{io, path::Path};

/// Where the kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, source: io::Error },
    #[error("malformed BTF: {0}")]
    Format(&'static str),
    #[error("BTF has no member {member} in struct {ty}")]
    Missing {
        ty: &'static str,
        member: &'static str,
    },
}

/// A struct or union member: its name, its type and its offset in bits.
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// One BTF type: its kind and name, and its members when it is a struct or a union.
struct Type {
    kind: u32,
    name_off: u32,
    members: Vec<Member>,
}

/// The types and names of one BTF blob.
pub struct Btf {
    /// Index = type id - 1 (id 0 is `void`).
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads and parses the BTF at `path` (usually [`VMLINUX`]).
    pub fn read(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let u16_at = |off: usize| -> Result<u16, BtfError> {
            data.get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(BtfError::Format("truncated header"))
        };
        if u16_at(0)? != MAGIC {
            return Err(BtfError::Format("bad magic (or big-endian BTF)"));
        }
        let header = Words::new(data, 4);
        let hdr_len = header.at(0)? as usize;
        let (type_off, type_len) = (header.at(1)? as usize, header.at(2)? as usize);
        let (str_off, str_len) = (header.at(3)? as usize, header.at(4)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Format("header too short"));
        }
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Format("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        Ok(Btf {
            types: parse_types(type_data)?,
            strings,
        })
    }

    /// The byte offset of `member` in struct `ty`, looking into anonymous struct and union
    /// members too (e.g. `sk_buff`'s `sk`, which sits in an anonymous union).
    pub fn member_offset(&self, ty: &'static str, member: &'static str) -> Result<u32, BtfError> {
        let missing = BtfError::Missing { ty, member };
        let outer = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && !t.members.is_empty() && self.name(t.name_off) == ty)
            .ok_or(missing)?;
        let bits = self
            .find_member(outer, member, 0)
            .ok_or(BtfError::Missing { ty, member })?;
        if bits % 8 != 0 {
            return Err(BtfError::Format("member is a bitfield"));
        }
        Ok(bits / 8)
    }

    /// Depth-first through anonymous members; the result in bits from the outer start.
    fn find_member(&self, t: &Type, member: &str, base: u32) -> Option<u32> {
        for m in &t.members {
            let at = base + m.bit_offset;
            if m.name_off != 0 {
                if self.name(m.name_off) == member {
                    return Some(at);
                }
                continue;
            }
            let inner = self.types.get((m.type_id as usize).checked_sub(1)?)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.find_member(inner, member, at)
            {
                return Some(found);
            }
        }
        None
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }
}

/// Little-endian u32 words of `data` from byte `start`.
struct Words<'a> {
    data: &'a [u8],
    start: usize,
}

impl<'a> Words<'a> {
    fn new(data: &'a [u8], start: usize) -> Words<'a> {
        Words { data, start }
    }

    fn at(&self, i: usize) -> Result<u32, BtfError> {
        let off = self.start + 4 * i;
        self.data
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(BtfError::Format("truncated type"))
    }
}

/// Walks the type section: every type is 12 bytes plus data that depends on its kind.
fn parse_types(data: &[u8]) -> Result<Vec<Type>, BtfError> {
    let mut types = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let w = Words::new(data, off);
        let (name_off, info) = (w.at(0)?, w.at(1)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let extra = match kind {
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            2 | 7..=12 | 16 | 18 => 0,
            // INT, VAR, DECL_TAG
            1 | 14 | 17 => 4,
            // ARRAY
            3 => 12,
            // STRUCT, UNION, DATASEC, ENUM64
            4 | 5 | 15 | 19 => 12 * vlen,
            // ENUM, FUNC_PROTO
            6 | 13 => 8 * vlen,
            _ => return Err(BtfError::Format("unknown type kind")),
        };
        let mut members = Vec::new();
        if matches!(kind, KIND_STRUCT | KIND_UNION) {
            let m = Words::new(data, off + 12);
            for i in 0..vlen {
                let raw = m.at(3 * i + 2)?;
                members.push(Member {
                    name_off: m.at(3 * i)?,
                    type_id: m.at(3 * i + 1)?,
                    // With kind_flag the top 8 bits hold a bitfield's size.
                    bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                });
            }
        }
        types.push(Type {
            kind,
            name_off,
            members,
        });
        off += 12 + extra;
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct outer { u32 a; union { u32 sk; }; u32 cb; }` plus a forward
    /// declaration of `outer` ahead of it, which the lookup must skip.
    fn sample() -> Vec<u8> {
        let strings = b"\0u32\0outer\0a\0sk\0cb\0";
        let (u32_name, outer, a, sk, cb) = (1, 5, 11, 13, 16);
        let mut types: Vec<u32> = Vec::new();
        // 1: FWD outer
        types.extend([outer, 7 << 24, 0]);
        // 2: INT u32, 4 bytes (encoding word: 32 bits)
        types.extend([u32_name, 1 << 24, 4, 32]);
        // 3: anonymous UNION { sk: u32 @ 0 }
        types.extend([0, 5 << 24 | 1, 4, sk, 2, 0]);
        // 4: STRUCT outer, 12 bytes { a @ 0, <union 3> @ 32 bits, cb @ 64 bits }
        types.extend([outer, 4 << 24 | 3, 12, a, 2, 0, 0, 3, 32, cb, 2, 64]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_le_bytes());
        blob.extend([1, 0]); // version, flags
        for w in [
            HEADER_LEN as u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(w.to_le_bytes());
        }
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn members_are_found_in_anonymous_unions_too() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "sk").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "cb").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::Missing { .. })
        ));
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Btf::parse(b"not btf at all, not btf at all").is_err());
        let mut cut = sample();
        cut.truncate(40);
        assert!(Btf::parse(&cut).is_err());
    }

    #[test]
    fn the_running_kernel_has_the_fields_lb_splice_reads() {
        let btf = Btf::read(Path::new(VMLINUX)).unwrap();
        let sk = btf.member_offset("sk_buff", "sk").unwrap();
        let cb = btf.member_offset("sk_buff", "cb").unwrap();
        assert!(sk < cb, "sk_buff: sk at {sk}, cb at {cb}");
        assert_eq!(btf.member_offset("tcp_skb_cb", "seq").unwrap(), 0);
        btf.member_offset("tcp_sock", "copied_seq").unwrap();
    }
}
