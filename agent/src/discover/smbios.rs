//! The raw SMBIOS structure table (`/sys/firmware/dmi/tables/DMI`, root-only on real hosts)
//! and its entry point (`smbios_entry_point`, for the version): a bounds-checked walk over the
//! structures and typed decoders for the ones discovery needs — BIOS (type 0), system (1),
//! baseboard (2), chassis (3) and memory device (17).
//!
//! It promises never to panic and never to read past the buffer, whatever the bytes: a
//! truncated or garbled structure ends the walk with a [`SmbiosError`] and everything before
//! it is kept. It reads only those two files ([`load`], through [`HostRoot`]) and never
//! judges placeholder strings (that is [`crate::identity`]'s job).
//!
//! Layout (DMTF DSP0134): each structure is a 4-byte header (type, length of the formatted
//! area, handle), the rest of the formatted area, then a string set — NUL-terminated strings
//! ended by an extra NUL (an empty set is two NULs). String fields in the formatted area are
//! 1-based indexes into that set, 0 meaning "no string". Type 127 ends the table.

use std::borrow::Cow;

use crate::hostroot::{HostRoot, ReadError};

/// The raw structure table the kernel exports (root-only).
pub const TABLE_PATH: &str = "/sys/firmware/dmi/tables/DMI";
/// The entry point, for the SMBIOS version.
pub const ENTRY_POINT_PATH: &str = "/sys/firmware/dmi/tables/smbios_entry_point";
/// Real tables are a few KiB; a 64-bit entry point allows up to 4 GiB, we don't.
const TABLE_CAP: u64 = 4 * 1024 * 1024;

/// Reads the table and, when the entry point is readable and valid, the version.
pub fn load(root: &HostRoot) -> Result<(Vec<u8>, Option<Version>), ReadError> {
    let table = root.read_capped(TABLE_PATH, TABLE_CAP)?;
    let version = root
        .read_capped(ENTRY_POINT_PATH, 64)
        .ok()
        .and_then(|ep| parse_entry_point(&ep));
    Ok((table, version))
}

/// The SMBIOS version an entry point announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    /// From 2.6 on, the first three UUID fields are stored little-endian.
    pub fn uuid_is_little_endian(self) -> bool {
        self >= Version { major: 2, minor: 6 }
    }
}

/// Why the walk over a table stopped early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmbiosError {
    /// Fewer than 4 bytes where a structure header should be (and no end-of-table marker).
    #[error("structure header truncated at offset {offset}")]
    TruncatedHeader { offset: usize },
    /// A header claims a formatted area shorter than the header itself.
    #[error("structure at offset {offset} (type {kind}) has invalid length {length}")]
    BadLength { offset: usize, kind: u8, length: u8 },
    /// The formatted area runs past the end of the table.
    #[error("structure at offset {offset} (type {kind}) runs past the end of the table")]
    TruncatedStructure { offset: usize, kind: u8 },
    /// The string set is not ended by a double NUL before the end of the table.
    #[error("strings of structure at offset {offset} (type {kind}) are not terminated")]
    UnterminatedStrings { offset: usize, kind: u8 },
}

/// Reads the version from an entry point (`_SM_` 32-bit or `_SM3_` 64-bit); `None` when
/// the bytes are neither.
pub fn parse_entry_point(bytes: &[u8]) -> Option<Version> {
    if bytes.starts_with(b"_SM3_") {
        let (major, minor) = (*bytes.get(7)?, *bytes.get(8)?);
        return Some(Version { major, minor });
    }
    if bytes.starts_with(b"_SM_") {
        let (major, minor) = (*bytes.get(6)?, *bytes.get(7)?);
        // Some old firmware announces 2.31 or 2.33 for 2.3 and 2.51 for 2.6; dmidecode
        // corrects them the same way, and the minor decides the UUID byte order.
        let minor = match (major, minor) {
            (2, 31 | 33) => 3,
            (2, 51) => 6,
            _ => minor,
        };
        return Some(Version { major, minor });
    }
    None
}

/// One structure of the table, borrowing the table's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Structure<'a> {
    /// The structure type (0 BIOS, 1 system, 17 memory device, …).
    pub kind: u8,
    pub handle: u16,
    /// The whole formatted area, header included, so offsets match the specification.
    formatted: &'a [u8],
    /// The string set without its final terminator.
    strings: &'a [u8],
}

impl<'a> Structure<'a> {
    /// The formatted-area length the structure declares (the spec's "Length" field).
    pub fn length(&self) -> usize {
        self.formatted.len()
    }

    pub fn byte(&self, offset: usize) -> Option<u8> {
        self.formatted.get(offset).copied()
    }

    pub fn word(&self, offset: usize) -> Option<u16> {
        let b = self.formatted.get(offset..offset.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn dword(&self, offset: usize) -> Option<u32> {
        let b = self.formatted.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Raw bytes of the formatted area.
    pub fn bytes(&self, offset: usize, len: usize) -> Option<&'a [u8]> {
        self.formatted.get(offset..offset.checked_add(len)?)
    }

    /// The string a string field at `offset` points to, trimmed; `None` for index 0, an
    /// index past the set, an empty string or a field beyond the structure's length.
    pub fn string(&self, offset: usize) -> Option<Cow<'a, str>> {
        let index = usize::from(self.byte(offset)?);
        if index == 0 {
            return None;
        }
        let raw = self.strings.split(|b| *b == 0).nth(index - 1)?;
        let text = match String::from_utf8_lossy(raw) {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        };
        (!text.is_empty()).then_some(text)
    }

    /// [`Structure::string`] as an owned `String`.
    fn owned_string(&self, offset: usize) -> Option<String> {
        self.string(offset).map(Cow::into_owned)
    }
}

/// Walks the structures of a table; see [`structures`].
#[derive(Clone, Debug)]
pub struct Structures<'a> {
    table: &'a [u8],
    offset: usize,
    done: bool,
}

/// Iterates over the structures of `table`, in order, up to the end-of-table structure
/// (type 127, not yielded) or the end of the bytes. A malformed structure is yielded as an
/// `Err` and ends the walk.
pub fn structures(table: &[u8]) -> Structures<'_> {
    Structures {
        table,
        offset: 0,
        done: false,
    }
}

impl<'a> Structures<'a> {
    fn fail(&mut self, e: SmbiosError) -> Option<Result<Structure<'a>, SmbiosError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl<'a> Iterator for Structures<'a> {
    type Item = Result<Structure<'a>, SmbiosError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let offset = self.offset;
        let rest = self.table.get(offset..).unwrap_or_default();
        if rest.is_empty() {
            // A table without an end marker is common (the kernel exports exactly the
            // length the entry point gives); ending here is not an error.
            self.done = true;
            return None;
        }
        if rest.len() < 4 {
            // Trailing padding of zeros is harmless; anything else is a cut header.
            if rest.iter().all(|b| *b == 0) {
                self.done = true;
                return None;
            }
            return self.fail(SmbiosError::TruncatedHeader { offset });
        }
        let kind = rest[0];
        let length = rest[1];
        let handle = u16::from_le_bytes([rest[2], rest[3]]);
        if length < 4 {
            return self.fail(SmbiosError::BadLength {
                offset,
                kind,
                length,
            });
        }
        let Some(formatted) = rest.get(..usize::from(length)) else {
            return self.fail(SmbiosError::TruncatedStructure { offset, kind });
        };
        let after = &rest[usize::from(length)..];
        let Some(end) = after.windows(2).position(|w| w == [0, 0]) else {
            return self.fail(SmbiosError::UnterminatedStrings { offset, kind });
        };
        // `end` is where the double NUL starts; the set's last string ends at `end`.
        let strings = &after[..end];
        self.offset = offset + usize::from(length) + end + 2;
        if kind == 127 {
            self.done = true;
            return None;
        }
        Some(Ok(Structure {
            kind,
            handle,
            formatted,
            strings,
        }))
    }
}

/// Formats the 16-byte UUID field; `None` when it is all zeros or all 0xFF ("not present"
/// / "not set" per the spec). `little_endian` applies to the first three fields (SMBIOS
/// ≥ 2.6), as the kernel's `product_uuid` does.
pub fn format_uuid(raw: &[u8; 16], little_endian: bool) -> Option<String> {
    if raw.iter().all(|b| *b == 0) || raw.iter().all(|b| *b == 0xFF) {
        return None;
    }
    let mut b = *raw;
    if little_endian {
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
    }
    let h = hex::encode(b);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Type 0: BIOS information.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bios {
    pub vendor: Option<String>,
    pub version: Option<String>,
    pub release_date: Option<String>,
}

/// Decodes a type 0 structure.
pub fn bios(s: &Structure<'_>) -> Bios {
    Bios {
        vendor: s.owned_string(0x04),
        version: s.owned_string(0x05),
        release_date: s.owned_string(0x08),
    }
}

/// Type 1: system information.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct System {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial_number: Option<String>,
    /// Lowercase, hyphenated; `None` when absent or all-0 / all-F.
    pub uuid: Option<String>,
    pub sku: Option<String>,
    pub family: Option<String>,
}

/// Decodes a type 1 structure; `version` decides the UUID byte order (unknown → ≥ 2.6, as
/// every firmware of the last fifteen years is).
pub fn system(s: &Structure<'_>, version: Option<Version>) -> System {
    let little_endian = version.is_none_or(Version::uuid_is_little_endian);
    let uuid = s
        .bytes(0x08, 16)
        .and_then(|b| <&[u8; 16]>::try_from(b).ok())
        .and_then(|b| format_uuid(b, little_endian));
    System {
        manufacturer: s.owned_string(0x04),
        product: s.owned_string(0x05),
        version: s.owned_string(0x06),
        serial_number: s.owned_string(0x07),
        uuid,
        sku: s.owned_string(0x19),
        family: s.owned_string(0x1A),
    }
}

/// Type 2: baseboard information.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseboard {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial_number: Option<String>,
    pub asset_tag: Option<String>,
}

/// Decodes a type 2 structure.
pub fn baseboard(s: &Structure<'_>) -> Baseboard {
    Baseboard {
        manufacturer: s.owned_string(0x04),
        product: s.owned_string(0x05),
        version: s.owned_string(0x06),
        serial_number: s.owned_string(0x07),
        asset_tag: s.owned_string(0x08),
    }
}

/// Type 3: system enclosure or chassis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chassis {
    pub manufacturer: Option<String>,
    /// The chassis type code without the lock bit (see [`chassis_type_name`]).
    pub type_code: Option<u8>,
    pub version: Option<String>,
    pub serial_number: Option<String>,
    pub asset_tag: Option<String>,
}

/// Decodes a type 3 structure.
pub fn chassis(s: &Structure<'_>) -> Chassis {
    Chassis {
        manufacturer: s.owned_string(0x04),
        type_code: s.byte(0x05).map(|b| b & 0x7F),
        version: s.owned_string(0x06),
        serial_number: s.owned_string(0x07),
        asset_tag: s.owned_string(0x08),
    }
}

/// The size a memory device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleSize {
    /// Size 0: the slot is empty.
    Empty,
    /// 0xFFFF: a module is present but its size is unknown.
    Unknown,
    Bytes(u64),
}

/// Type 17: memory device (one slot, populated or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryDevice {
    pub handle: u16,
    pub size: ModuleSize,
    /// SMBIOS form factor code (see [`form_factor_name`]).
    pub form_factor: Option<u8>,
    pub device_locator: Option<String>,
    pub bank_locator: Option<String>,
    /// SMBIOS memory type code (see [`memory_type_name`]).
    pub memory_type: Option<u8>,
    /// Type detail bit field (see [`type_detail_names`]).
    pub type_detail: Option<u16>,
    /// Maximum speed in MT/s; `None` when unknown.
    pub speed_mts: Option<u32>,
    pub manufacturer: Option<String>,
    pub serial_number: Option<String>,
    pub asset_tag: Option<String>,
    pub part_number: Option<String>,
    /// Rank count; `None` when unknown.
    pub rank: Option<u8>,
    /// Configured speed in MT/s; `None` when unknown.
    pub configured_speed_mts: Option<u32>,
}

impl MemoryDevice {
    /// Whether a module sits in this slot.
    pub fn is_populated(&self) -> bool {
        self.size != ModuleSize::Empty
    }
}

/// Decodes a type 17 structure. Fields beyond the declared length (older SMBIOS versions)
/// are `None`.
pub fn memory_device(s: &Structure<'_>) -> MemoryDevice {
    let size = match s.word(0x0C) {
        None | Some(0) => ModuleSize::Empty,
        Some(0xFFFF) => ModuleSize::Unknown,
        Some(0x7FFF) => match s.dword(0x1C) {
            // Extended size: MiB in bits 30:0 (SMBIOS 2.7+), for modules of 32 GiB and up.
            Some(ext) => ModuleSize::Bytes(u64::from(ext & 0x7FFF_FFFF) << 20),
            None => ModuleSize::Unknown,
        },
        // Bit 15 set: the size is in KiB, not MiB.
        Some(v) if v & 0x8000 != 0 => ModuleSize::Bytes(u64::from(v & 0x7FFF) << 10),
        Some(v) => ModuleSize::Bytes(u64::from(v) << 20),
    };
    let speed = |word_at: usize, ext_at: usize| match s.word(word_at) {
        None | Some(0) => None,
        // 0xFFFF: the speed is in the extended DWORD (SMBIOS 3.3+), bits 30:0.
        Some(0xFFFF) => s.dword(ext_at).map(|d| d & 0x7FFF_FFFF).filter(|d| *d != 0),
        Some(v) => Some(u32::from(v)),
    };
    MemoryDevice {
        handle: s.handle,
        size,
        form_factor: s.byte(0x0E),
        device_locator: s.owned_string(0x10),
        bank_locator: s.owned_string(0x11),
        memory_type: s.byte(0x12),
        type_detail: s.word(0x13),
        speed_mts: speed(0x15, 0x54),
        manufacturer: s.owned_string(0x17),
        serial_number: s.owned_string(0x18),
        asset_tag: s.owned_string(0x19),
        part_number: s.owned_string(0x1A),
        rank: s.byte(0x1B).map(|b| b & 0x0F).filter(|r| *r != 0),
        configured_speed_mts: speed(0x20, 0x58),
    }
}

/// The name of a chassis type code (DSP0134 "System Enclosure or Chassis Types").
pub fn chassis_type_name(code: u8) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "Other",
        "Unknown",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All in One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "SubChassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system chassis",
        "Compact PCI",
        "Advanced TCA",
        "Blade",
        "Blade Enclosure",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    let code = code & 0x7F;
    NAMES.get(usize::from(code).checked_sub(1)?).copied()
}

/// The name of a memory type code (DSP0134 "Memory Device — Type").
pub fn memory_type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "Other",
        0x02 => "Unknown",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0A => "EEPROM",
        0x0B => "FEPROM",
        0x0C => "EPROM",
        0x0D => "CDRAM",
        0x0E => "3DRAM",
        0x0F => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return None,
    })
}

/// The name of a memory form factor code (DSP0134 "Memory Device — Form Factor").
pub fn form_factor_name(code: u8) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "Other",
        "Unknown",
        "SIMM",
        "SIP",
        "Chip",
        "DIP",
        "ZIP",
        "Proprietary Card",
        "DIMM",
        "TSOP",
        "Row Of Chips",
        "RIMM",
        "SODIMM",
        "SRIMM",
        "FB-DIMM",
        "Die",
        "CAMM",
    ];
    NAMES.get(usize::from(code).checked_sub(1)?).copied()
}

/// The names of the bits set in a memory type detail field (DSP0134 "Memory Device — Type
/// Detail"); reserved bits are ignored.
pub fn type_detail_names(bits: u16) -> Vec<&'static str> {
    const NAMES: [(u16, &str); 15] = [
        (1, "Other"),
        (2, "Unknown"),
        (3, "Fast-paged"),
        (4, "Static Column"),
        (5, "Pseudo-static"),
        (6, "RAMBus"),
        (7, "Synchronous"),
        (8, "CMOS"),
        (9, "EDO"),
        (10, "Window DRAM"),
        (11, "Cache DRAM"),
        (12, "Non-volatile"),
        (13, "Registered (Buffered)"),
        (14, "Unbuffered (Unregistered)"),
        (15, "LRDIMM"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| bits & (1 << bit) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The decoded structures discovery needs, from one walk over a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub bios: Option<Bios>,
    pub system: Option<System>,
    pub baseboard: Option<Baseboard>,
    pub chassis: Option<Chassis>,
    pub memory_devices: Vec<MemoryDevice>,
    /// Why the walk stopped early, if it did (everything before it is kept).
    pub error: Option<SmbiosError>,
}

/// Walks `table` once and decodes the first BIOS, system, baseboard and chassis structures
/// and every memory device.
pub fn decode(table: &[u8], version: Option<Version>) -> Decoded {
    let mut d = Decoded::default();
    for s in structures(table) {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                d.error = Some(e);
                break;
            }
        };
        match s.kind {
            0 if d.bios.is_none() => d.bios = Some(bios(&s)),
            1 if d.system.is_none() => d.system = Some(system(&s, version)),
            2 if d.baseboard.is_none() => d.baseboard = Some(baseboard(&s)),
            3 if d.chassis.is_none() => d.chassis = Some(chassis(&s)),
            17 => d.memory_devices.push(memory_device(&s)),
            _ => {}
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds one structure: formatted area (header added here) and strings (never empty:
    /// an empty string would end the set; absent strings are index 0).
    fn structure(kind: u8, handle: u16, body: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut v = vec![kind, (body.len() + 4) as u8];
        v.extend_from_slice(&handle.to_le_bytes());
        v.extend_from_slice(body);
        if strings.is_empty() {
            v.extend_from_slice(&[0, 0]);
        } else {
            for s in strings {
                v.extend_from_slice(s.as_bytes());
                v.push(0);
            }
            v.push(0);
        }
        v
    }

    fn memory_device_body(size: u16, ext_size: u32, speed: u16, ext_speed: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x5C - 4];
        let mut put = |off: usize, bytes: &[u8]| {
            b[off - 4..off - 4 + bytes.len()].copy_from_slice(bytes);
        };
        put(0x0C, &size.to_le_bytes());
        put(0x0E, &[0x09]); // DIMM
        put(0x10, &[1, 2]); // locators
        put(0x12, &[0x1A]); // DDR4
        put(0x13, &(1u16 << 13 | 1 << 7).to_le_bytes());
        put(0x15, &speed.to_le_bytes());
        put(0x17, &[3, 4, 0, 5]);
        put(0x1B, &[0x02]);
        put(0x1C, &ext_size.to_le_bytes());
        put(0x20, &speed.to_le_bytes());
        put(0x54, &ext_speed.to_le_bytes());
        put(0x58, &ext_speed.to_le_bytes());
        b
    }

    fn sample_table() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(structure(
            0,
            0,
            &[1, 2, 0, 0xF0, 3, 0xFF],
            &["Dell Inc.", "2.19.1", "06/21/2023"],
        ));
        let mut sys = vec![1, 2, 0, 3];
        sys.extend_from_slice(&[
            0x44, 0x45, 0x4c, 0x4c, 0x58, 0x00, 0x10, 0x4a, 0x80, 0x32, 0xb7, 0xc0, 0x4f, 0x50,
            0x51, 0x32,
        ]);
        sys.extend_from_slice(&[6, 4, 5]);
        t.extend(structure(
            1,
            0x100,
            &sys,
            &[
                "Dell Inc.",
                "PowerEdge R740",
                "7XJ2PQ2",
                "SKU=NotProvided",
                "PowerEdge",
            ],
        ));
        t.extend(structure(
            3,
            0x300,
            &[1, 0x17, 0, 2, 0],
            &["Dell Inc.", "7XJ2PQ2"],
        ));
        t.extend(structure(
            17,
            0x1100,
            &memory_device_body(0x7FFF, 32768, 2933, 0),
            &[
                "A1",
                "Not Specified",
                "Samsung",
                "35A1B2C3",
                "M393A4K40DB2-CVF",
            ],
        ));
        t.extend(structure(
            17,
            0x1101,
            &memory_device_body(0, 0, 0, 0),
            &["A2", "Not Specified", "NO DIMM", "NO DIMM", "NO DIMM"],
        ));
        t.extend(structure(127, 0xFEFF, &[], &[]));
        t
    }

    #[test]
    fn decodes_a_table() {
        let d = decode(&sample_table(), Some(Version { major: 3, minor: 2 }));
        assert_eq!(d.error, None);
        let bios = d.bios.unwrap();
        assert_eq!(bios.vendor.as_deref(), Some("Dell Inc."));
        assert_eq!(bios.release_date.as_deref(), Some("06/21/2023"));
        let sys = d.system.unwrap();
        assert_eq!(
            sys.uuid.as_deref(),
            Some("4c4c4544-0058-4a10-8032-b7c04f505132")
        );
        assert_eq!(sys.version, None, "string index 0 is absent");
        assert_eq!(sys.family.as_deref(), Some("PowerEdge"));
        let ch = d.chassis.unwrap();
        assert_eq!(
            ch.type_code.and_then(chassis_type_name),
            Some("Rack Mount Chassis")
        );
        assert_eq!(ch.serial_number.as_deref(), Some("7XJ2PQ2"));
        assert_eq!(d.memory_devices.len(), 2);
        let m = &d.memory_devices[0];
        assert_eq!(m.size, ModuleSize::Bytes(32 << 30));
        assert_eq!(m.speed_mts, Some(2933));
        assert_eq!(m.rank, Some(2));
        assert_eq!(m.memory_type.and_then(memory_type_name), Some("DDR4"));
        assert_eq!(m.form_factor.and_then(form_factor_name), Some("DIMM"));
        assert_eq!(
            type_detail_names(m.type_detail.unwrap()),
            vec!["Synchronous", "Registered (Buffered)"]
        );
        assert_eq!(m.part_number.as_deref(), Some("M393A4K40DB2-CVF"));
        assert_eq!(m.asset_tag, None);
        assert!(!d.memory_devices[1].is_populated());
    }

    #[test]
    fn sizes_and_speeds_use_their_special_encodings() {
        let dev = |size, ext, speed, ext_speed| {
            let t = structure(
                17,
                1,
                &memory_device_body(size, ext, speed, ext_speed),
                &["X"],
            );
            memory_device(&structures(&t).next().unwrap().unwrap())
        };
        assert_eq!(
            dev(0x8000 | 512, 0, 0, 0).size,
            ModuleSize::Bytes(512 << 10)
        );
        assert_eq!(dev(16384, 0, 0, 0).size, ModuleSize::Bytes(16 << 30));
        assert_eq!(dev(0xFFFF, 0, 0, 0).size, ModuleSize::Unknown);
        assert_eq!(dev(8192, 0, 0, 0).speed_mts, None);
        assert_eq!(dev(8192, 0, 0xFFFF, 70_000).speed_mts, Some(70_000));
        assert_eq!(
            dev(8192, 0, 0xFFFF, 70_000).configured_speed_mts,
            Some(70_000)
        );
    }

    #[test]
    fn short_structures_lack_late_fields() {
        // An SMBIOS 2.3 memory device (length 0x1B): no rank, no extended size.
        let body = &memory_device_body(0x7FFF, 32768, 800, 0)[..0x1B - 4];
        let t = structure(17, 1, body, &["DIMM0"]);
        let m = memory_device(&structures(&t).next().unwrap().unwrap());
        assert_eq!(m.size, ModuleSize::Unknown);
        assert_eq!(m.rank, None);
        assert_eq!(m.configured_speed_mts, None);
        assert_eq!(m.speed_mts, Some(800));
    }

    #[test]
    fn uuid_byte_order_follows_the_version() {
        let raw = [
            0x44, 0x45, 0x4c, 0x4c, 0x58, 0x00, 0x10, 0x4a, 0x80, 0x32, 0xb7, 0xc0, 0x4f, 0x50,
            0x51, 0x32,
        ];
        assert_eq!(
            format_uuid(&raw, true).unwrap(),
            "4c4c4544-0058-4a10-8032-b7c04f505132"
        );
        assert_eq!(
            format_uuid(&raw, false).unwrap(),
            "44454c4c-5800-104a-8032-b7c04f505132"
        );
        assert_eq!(format_uuid(&[0; 16], true), None);
        assert_eq!(format_uuid(&[0xFF; 16], true), None);
        assert!(!Version { major: 2, minor: 5 }.uuid_is_little_endian());
        assert!(Version { major: 2, minor: 6 }.uuid_is_little_endian());
    }

    #[test]
    fn entry_points_give_the_version() {
        let mut ep3 = b"_SM3_".to_vec();
        ep3.extend_from_slice(&[0, 0x18, 3, 2, 0, 1, 0]);
        assert_eq!(
            parse_entry_point(&ep3),
            Some(Version { major: 3, minor: 2 })
        );
        let mut ep2 = b"_SM_".to_vec();
        ep2.extend_from_slice(&[0, 0x1F, 2, 8]);
        assert_eq!(
            parse_entry_point(&ep2),
            Some(Version { major: 2, minor: 8 })
        );
        assert_eq!(parse_entry_point(b"_SM3_"), None);
        assert_eq!(parse_entry_point(b"garbage"), None);
    }

    #[test]
    fn malformed_structures_end_the_walk_and_keep_the_rest() {
        let good = structure(0, 0, &[1, 2, 0, 0xF0, 3, 0xFF], &["A", "B", "C"]);
        let mut truncated = good.clone();
        truncated.extend_from_slice(&[1, 0x1B, 0]);
        let all: Vec<_> = structures(&truncated).collect();
        assert_eq!(all.len(), 2);
        assert!(matches!(
            all[1],
            Err(SmbiosError::TruncatedHeader { offset }) if offset == good.len()
        ));
        // Zero padding after the last structure is not an error.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(structures(&padded).count(), 1);

        let mut bad_len = good.clone();
        bad_len.extend_from_slice(&[1, 2, 0, 0, 0, 0]);
        assert!(matches!(
            structures(&bad_len).nth(1),
            Some(Err(SmbiosError::BadLength { .. }))
        ));

        // Cut inside the string set of the last memory device.
        let mut t = sample_table();
        t.truncate(t.len() - 8);
        let d = decode(&t, None);
        assert!(d.bios.is_some() && d.system.is_some());
        assert!(matches!(
            d.error,
            Some(SmbiosError::UnterminatedStrings { .. })
        ));
    }

    #[test]
    fn string_indexes_out_of_range_are_absent() {
        let t = structure(2, 0, &[1, 9, 0, 2, 1], &["ASRock", "M80-C6016100456"]);
        let s = structures(&t).next().unwrap().unwrap();
        let b = baseboard(&s);
        assert_eq!(b.manufacturer.as_deref(), Some("ASRock"));
        assert_eq!(b.product, None);
        assert_eq!(b.version, None);
        assert_eq!(b.serial_number.as_deref(), Some("M80-C6016100456"));
        assert_eq!(b.asset_tag.as_deref(), Some("ASRock"));
        assert_eq!(s.string(0x40), None);
    }

    #[test]
    fn names_cover_the_spec_tables() {
        assert_eq!(chassis_type_name(3), Some("Desktop"));
        assert_eq!(chassis_type_name(0x83), Some("Desktop"), "lock bit ignored");
        assert_eq!(chassis_type_name(9), Some("Laptop"));
        assert_eq!(chassis_type_name(0x24), Some("Stick PC"));
        assert_eq!(chassis_type_name(0), None);
        assert_eq!(chassis_type_name(0x25), None);
        assert_eq!(memory_type_name(0x22), Some("DDR5"));
        assert_eq!(memory_type_name(0x1E), Some("LPDDR4"));
        assert_eq!(memory_type_name(0x15), None);
        assert_eq!(form_factor_name(0x0D), Some("SODIMM"));
        assert_eq!(form_factor_name(0x0B), Some("Row Of Chips"));
        assert_eq!(form_factor_name(0), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let d = decode(&bytes, None);
            for m in &d.memory_devices {
                let _ = m.memory_type.and_then(memory_type_name);
                let _ = m.type_detail.map(type_detail_names);
            }
            let _ = parse_entry_point(&bytes);
            let n = structures(&bytes).count();
            prop_assert!(n <= bytes.len() / 4 + 1);
        }

        #[test]
        fn mutated_tables_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut t = sample_table();
            for (i, b) in edits {
                let at = i.index(t.len());
                t[at] = b;
            }
            let keep = cut.index(t.len() + 1);
            t.truncate(keep);
            let d = decode(&t, Some(Version { major: 2, minor: 4 }));
            for s in structures(&t).flatten() {
                for off in 0..0x60 {
                    let _ = s.string(off);
                    let _ = s.dword(off);
                }
            }
            // Every structure is at least 6 bytes (header + empty string set).
            prop_assert!(d.memory_devices.len() <= t.len() / 6);
        }
    }
}
