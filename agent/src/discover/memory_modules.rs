//! `memory_module` CIs: the populated memory slots the firmware describes in SMBIOS type 17
//! structures (`/sys/firmware/dmi/tables/DMI`, root-only on real hosts) — size, DDR
//! generation, speeds, manufacturer, serial and part number.
//!
//! Keys are the slot's device locator ("DIMM_A1"); when the board gives several slots the
//! same locator (one "DIMM 0" per channel), every such slot is keyed `<bank>/<locator>`.
//! Duplicates are judged over all slots, populated or not, so that adding a module never
//! renames the ones already there. Placeholder serials and part numbers are `null`.
//!
//! Status: no table → `unsupported` (containers, most ARM boards); a table we may not read
//! → `permission_denied`, with no items (never an empty list passed off as "no memory"); a
//! table cut short → `partial` with the modules before the damage. It never runs dmidecode.

use std::collections::HashMap;

use cmdb_proto::model::{AttrValue, Item, class};

use super::smbios::{self, MemoryDevice, ModuleSize};
use super::{Collector, Context, Outcome};
use crate::identity;

pub struct MemoryModuleCollector;

impl Collector for MemoryModuleCollector {
    fn name(&self) -> &'static str {
        "memory_module"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::MEMORY_MODULE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let (table, version) = match smbios::load(&ctx.root) {
            Ok(t) => t,
            Err(e) if e.is_not_found() => {
                return Outcome::unsupported(format!(
                    "no SMBIOS table ({} absent)",
                    smbios::TABLE_PATH
                ));
            }
            Err(e) if e.is_permission_denied() => {
                let mut o = Outcome::new();
                o.permission_denied(format!(
                    "{}: permission denied; run as root or grant CAP_DAC_READ_SEARCH",
                    smbios::TABLE_PATH
                ));
                return o;
            }
            Err(e) => return Outcome::error(e.to_string()),
        };
        let decoded = smbios::decode(&table, version);
        let mut outcome = Outcome::new();
        for item in modules(&decoded.memory_devices) {
            outcome.push(item);
        }
        if let Some(e) = decoded.error {
            outcome.warn(format!("{}: {e}", smbios::TABLE_PATH));
        }
        outcome
    }
}

/// Part-number/serial/manufacturer fillers BIOSes ship, after trailing digits are cut
/// ("SerNum0", "ModulePartNumber00", "Manufacturer1"…).
const MODULE_PLACEHOLDERS: &[&str] = &[
    "manufacturer",
    "sernum",
    "serial",
    "partnum",
    "modulepartnumber",
    "module part number",
    "assettagnum",
    "asset tag",
    "no dimm",
    "empty",
];

/// `Some(trimmed)` unless the text is a placeholder (identity's list or a module filler).
fn module_value(text: Option<&str>) -> Option<String> {
    let v = identity::real_value(text?)?;
    let stem = v
        .trim_end_matches(|c: char| c.is_ascii_digit() || c == '_' || c == ' ')
        .to_ascii_lowercase();
    (!MODULE_PLACEHOLDERS.contains(&stem.as_str())).then_some(v)
}

/// The key of every slot (index-aligned with `devices`).
fn keys(devices: &[MemoryDevice]) -> Vec<String> {
    let base: Vec<String> = devices
        .iter()
        .map(|d| match d.device_locator.as_deref() {
            Some(l) => l.to_owned(),
            None => format!("handle 0x{:04X}", d.handle),
        })
        .collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for k in &base {
        *count.entry(k.as_str()).or_default() += 1;
    }
    let mut keys: Vec<String> = devices
        .iter()
        .zip(&base)
        .map(
            |(d, k)| match (count.get(k.as_str()), d.bank_locator.as_deref()) {
                (Some(n), Some(bank)) if *n > 1 => format!("{bank}/{k}"),
                _ => k.clone(),
            },
        )
        .collect();
    // Firmware that repeats bank and locator alike still gets distinct keys.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for k in &keys {
        *seen.entry(k.clone()).or_default() += 1;
    }
    for (k, d) in keys.iter_mut().zip(devices) {
        if seen.get(k.as_str()).is_some_and(|n| *n > 1) {
            k.push_str(&format!(" (handle 0x{:04X})", d.handle));
        }
    }
    keys
}

/// The `memory_module` items of the populated slots among `devices`.
pub fn modules(devices: &[MemoryDevice]) -> Vec<Item> {
    keys(devices)
        .into_iter()
        .zip(devices)
        .filter(|(_, d)| d.is_populated())
        .map(|(key, d)| item(key, d))
        .collect()
}

fn item(key: String, d: &MemoryDevice) -> Item {
    let size = match d.size {
        ModuleSize::Bytes(b) => AttrValue::from(b),
        ModuleSize::Empty | ModuleSize::Unknown => AttrValue::Null,
    };
    // "Unknown" and "Other" name nothing a consumer can use.
    let named = |name: Option<&'static str>| name.filter(|n| !matches!(*n, "Unknown" | "Other"));
    let type_detail: Vec<&str> = d
        .type_detail
        .map(smbios::type_detail_names)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !matches!(*n, "Unknown" | "Other"))
        .collect();
    Item::new(class::MEMORY_MODULE, key)
        .with("locator", module_value(d.device_locator.as_deref()))
        .with("bank_locator", module_value(d.bank_locator.as_deref()))
        .with("size_bytes", size)
        .with(
            "type",
            named(d.memory_type.and_then(smbios::memory_type_name)),
        )
        .with("type_detail", type_detail)
        .with(
            "form_factor",
            named(d.form_factor.and_then(smbios::form_factor_name)),
        )
        .with("speed_mts", d.speed_mts)
        .with("configured_speed_mts", d.configured_speed_mts)
        .with("rank", d.rank.map(u32::from))
        .with("manufacturer", module_value(d.manufacturer.as_deref()))
        .with("serial_number", module_value(d.serial_number.as_deref()))
        .with("part_number", module_value(d.part_number.as_deref()))
        .with("asset_tag", module_value(d.asset_tag.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(locator: &str, bank: &str, size: ModuleSize) -> MemoryDevice {
        MemoryDevice {
            handle: 0x1100,
            size,
            form_factor: Some(0x09),
            device_locator: Some(locator.into()),
            bank_locator: Some(bank.into()),
            memory_type: Some(0x1A),
            type_detail: Some(1 << 7 | 1 << 14),
            speed_mts: Some(3200),
            manufacturer: Some("Unknown".into()),
            serial_number: Some("SerNum0".into()),
            asset_tag: Some("Not Specified".into()),
            part_number: Some("F4-3200C16-16GVK    ".trim().into()),
            rank: Some(2),
            configured_speed_mts: Some(3200),
        }
    }

    #[test]
    fn shared_locators_are_prefixed_with_their_bank() {
        let gib16 = ModuleSize::Bytes(16 << 30);
        let devices = vec![
            slot("DIMM 0", "P0 CHANNEL A", ModuleSize::Empty),
            slot("DIMM 1", "P0 CHANNEL A", gib16),
            slot("DIMM 0", "P0 CHANNEL B", ModuleSize::Empty),
            slot("DIMM 1", "P0 CHANNEL B", gib16),
        ];
        let items = modules(&devices);
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["P0 CHANNEL A/DIMM 1", "P0 CHANNEL B/DIMM 1"]);
        let m = &items[0];
        assert_eq!(m.attr("size_bytes"), Some(&AttrValue::Int(16 << 30)));
        assert_eq!(m.attr("type"), Some(&AttrValue::from("DDR4")));
        assert_eq!(m.attr("form_factor"), Some(&AttrValue::from("DIMM")));
        assert_eq!(m.attr("manufacturer"), Some(&AttrValue::Null));
        assert_eq!(m.attr("serial_number"), Some(&AttrValue::Null));
        assert_eq!(m.attr("asset_tag"), Some(&AttrValue::Null));
        assert_eq!(
            m.attr("part_number"),
            Some(&AttrValue::from("F4-3200C16-16GVK"))
        );
        assert_eq!(
            m.attr("type_detail"),
            Some(&AttrValue::from(vec![
                "Synchronous",
                "Unbuffered (Unregistered)"
            ]))
        );
    }

    #[test]
    fn unique_locators_stay_plain_and_total_duplicates_get_the_handle() {
        let gib = ModuleSize::Bytes(1 << 30);
        let mut a = slot("DIMM_A1", "BANK 0", gib);
        let b = slot("DIMM_B1", "BANK 1", ModuleSize::Unknown);
        let items = modules(&[a.clone(), b]);
        assert_eq!(items[0].key, "DIMM_A1");
        assert_eq!(items[1].key, "DIMM_B1");
        assert_eq!(items[1].attr("size_bytes"), Some(&AttrValue::Null));

        let mut twin = a.clone();
        twin.handle = 0x1101;
        let mut nameless = a.clone();
        nameless.handle = 0x1102;
        nameless.device_locator = None;
        a.bank_locator = Some("BANK 0".into());
        let items = modules(&[a, twin, nameless]);
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "BANK 0/DIMM_A1 (handle 0x1100)",
                "BANK 0/DIMM_A1 (handle 0x1101)",
                "handle 0x1102",
            ]
        );
    }

    #[test]
    fn module_placeholders_are_null() {
        for p in [
            "SerNum0",
            "ModulePartNumber00",
            "Manufacturer1",
            "NO DIMM",
            "00000000",
            "Not Specified",
        ] {
            assert_eq!(module_value(Some(p)), None, "{p}");
        }
        for real in ["Samsung", "M393A4K40DB2-CVF", "35A1B2C3", "DIMM 0"] {
            assert_eq!(module_value(Some(real)).as_deref(), Some(real));
        }
    }
}
