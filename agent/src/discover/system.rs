//! The `system` CI: the machine itself — vendor, product, serials, UUID, board, BIOS and
//! chassis from the kernel's DMI attributes (`/sys/class/dmi/id`), whether it is a virtual
//! machine and whether the agent sees it from inside a container, and the cloud-init
//! instance id.
//!
//! It promises that a value it cannot read is `null`, never an empty string passed off as
//! real: vendor placeholders ("To Be Filled By O.E.M.", all-zero UUIDs…) become `null`
//! through [`identity::real_value`], because the collector identifies hosts by these values.
//! The serials and the UUID are root-only on real hosts: when they cannot be read the
//! status is `permission_denied` and the message names the files. Attributes sysfs lacks
//! (no DMI directory, an old kernel) are filled from the raw SMBIOS table when that is
//! readable. It never runs dmidecode or any other command.

mod virt;

use cmdb_proto::model::{AttrValue, Item, class};

use super::smbios::{self, Decoded};
use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};
use crate::identity;

use virt::{ContainerEvidence, DmiStrings, VirtEvidence, container, virtualization};

pub struct SystemCollector;

impl Collector for SystemCollector {
    fn name(&self) -> &'static str {
        "system"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::SYSTEM]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root)
    }
}

/// Where the kernel exports DMI attributes.
const DMI_DIR: &str = "/sys/class/dmi/id";

/// How an attribute's text becomes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Placeholders → null.
    Text,
    /// Placeholders → null, lowercased.
    Uuid,
    /// A numeric SMBIOS chassis type code → its name.
    ChassisType,
    /// Placeholders (and asset-tag ones) → null.
    AssetTag,
}

/// One `system` attribute read from a DMI file.
#[derive(Clone, Copy, Debug)]
struct Field {
    attr: &'static str,
    file: &'static str,
    kind: Kind,
}

const fn field(attr: &'static str, file: &'static str, kind: Kind) -> Field {
    Field { attr, file, kind }
}

/// The attributes read from `/sys/class/dmi/id`, in report order.
const FIELDS: &[Field] = &[
    field("vendor", "sys_vendor", Kind::Text),
    field("product", "product_name", Kind::Text),
    field("product_version", "product_version", Kind::Text),
    field("serial_number", "product_serial", Kind::Text),
    field("product_uuid", "product_uuid", Kind::Uuid),
    field("product_family", "product_family", Kind::Text),
    field("product_sku", "product_sku", Kind::Text),
    field("board_vendor", "board_vendor", Kind::Text),
    field("board_product", "board_name", Kind::Text),
    field("board_version", "board_version", Kind::Text),
    field("board_serial", "board_serial", Kind::Text),
    field("board_asset_tag", "board_asset_tag", Kind::AssetTag),
    field("bios_vendor", "bios_vendor", Kind::Text),
    field("bios_version", "bios_version", Kind::Text),
    field("bios_date", "bios_date", Kind::Text),
    field("chassis_vendor", "chassis_vendor", Kind::Text),
    field("chassis_type", "chassis_type", Kind::ChassisType),
    field("chassis_serial", "chassis_serial", Kind::Text),
    field("chassis_asset_tag", "chassis_asset_tag", Kind::AssetTag),
];

/// Asset-tag values vendors ship that tag nothing (beyond identity's placeholders).
const ASSET_TAG_PLACEHOLDERS: &[&str] = &[
    "no asset information",
    "no asset tag",
    "asset tag",
    "asset tag:",
    "chassis asset tag",
    "base board asset tag",
    "asset-1234567890",
    "not available",
];

/// What reading one DMI file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Raw {
    /// The trimmed text (possibly a placeholder).
    Value(String),
    /// Absent or empty: the firmware does not provide it.
    Absent,
    /// Root-only and we are not root.
    Denied,
    /// Any other read failure (the message).
    Failed(String),
}

/// Reads every DMI attribute with `read` (a seam: tests inject permission errors).
fn read_fields(read: impl Fn(&str) -> Result<Option<String>, ReadError>) -> Vec<Raw> {
    FIELDS
        .iter()
        .map(|f| match read(f.file) {
            Ok(Some(v)) => Raw::Value(v),
            Ok(None) => Raw::Absent,
            Err(e) if e.is_permission_denied() => Raw::Denied,
            Err(e) => Raw::Failed(e.to_string()),
        })
        .collect()
}

/// The SMBIOS table's text for a `system` attribute, for [`FIELDS`] sysfs lacks.
fn smbios_text(d: &Decoded, attr: &str) -> Option<String> {
    let sys = d.system.as_ref();
    let board = d.baseboard.as_ref();
    let bios = d.bios.as_ref();
    let chassis = d.chassis.as_ref();
    match attr {
        "vendor" => sys?.manufacturer.clone(),
        "product" => sys?.product.clone(),
        "product_version" => sys?.version.clone(),
        "serial_number" => sys?.serial_number.clone(),
        "product_uuid" => sys?.uuid.clone(),
        "product_family" => sys?.family.clone(),
        "product_sku" => sys?.sku.clone(),
        "board_vendor" => board?.manufacturer.clone(),
        "board_product" => board?.product.clone(),
        "board_version" => board?.version.clone(),
        "board_serial" => board?.serial_number.clone(),
        "board_asset_tag" => board?.asset_tag.clone(),
        "bios_vendor" => bios?.vendor.clone(),
        "bios_version" => bios?.version.clone(),
        "bios_date" => bios?.release_date.clone(),
        "chassis_vendor" => chassis?.manufacturer.clone(),
        // sysfs gives the code as decimal text; keep one path for both sources.
        "chassis_type" => chassis?.type_code.map(|c| c.to_string()),
        "chassis_serial" => chassis?.serial_number.clone(),
        "chassis_asset_tag" => chassis?.asset_tag.clone(),
        _ => None,
    }
}

/// The SMBIOS table as the fallback source: decoded, denied, or not there.
#[derive(Debug)]
enum Table {
    Decoded(Box<Decoded>),
    Denied,
    Unavailable,
}

/// The DMI attributes resolved from sysfs, then the table for what sysfs lacked.
#[derive(Debug, Default)]
struct Resolved {
    /// Trimmed text per [`FIELDS`] entry (placeholders still in).
    text: Vec<Option<String>>,
    /// Host paths that could not be read for lack of privilege.
    denied: Vec<String>,
    /// Other read failures.
    failures: Vec<String>,
}

/// Merges sysfs reads with the SMBIOS table; `table` is only called when sysfs lacked or
/// refused something.
fn resolve(raws: Vec<Raw>, dmi_dir_exists: bool, table: impl FnOnce() -> Table) -> Resolved {
    let needs_table = raws.iter().any(|r| matches!(r, Raw::Absent | Raw::Denied));
    let table = if needs_table {
        table()
    } else {
        Table::Unavailable
    };
    let mut out = Resolved::default();
    for (f, raw) in FIELDS.iter().zip(raws) {
        let from_table = match &table {
            Table::Decoded(d) => smbios_text(d, f.attr),
            _ => None,
        };
        let text = match raw {
            Raw::Value(v) => Some(v),
            Raw::Absent => from_table,
            Raw::Denied => {
                // The table is root-only too; when it answered, nothing is missing.
                if matches!(table, Table::Decoded(_)) {
                    from_table
                } else {
                    out.denied.push(format!("{DMI_DIR}/{}", f.file));
                    None
                }
            }
            Raw::Failed(msg) => {
                out.failures.push(msg);
                from_table
            }
        };
        out.text.push(text);
    }
    if !dmi_dir_exists && matches!(table, Table::Denied) {
        out.denied.push(smbios::TABLE_PATH.to_owned());
    }
    out
}

/// The attribute value of a DMI text.
fn value(kind: Kind, text: Option<&str>) -> AttrValue {
    let Some(text) = text else {
        return AttrValue::Null;
    };
    match kind {
        Kind::Text => identity::real_value(text).into(),
        Kind::Uuid => identity::real_value(text)
            .map(|u| u.to_ascii_lowercase())
            .into(),
        Kind::AssetTag => identity::real_value(text)
            .filter(|t| !ASSET_TAG_PLACEHOLDERS.contains(&t.to_ascii_lowercase().as_str()))
            .into(),
        Kind::ChassisType => text
            .trim()
            .parse::<u8>()
            .ok()
            .and_then(smbios::chassis_type_name)
            .into(),
    }
}

/// The cloud-init instance id; "iid-datasource-none" is cloud-init's "no cloud".
pub fn cloud_instance_id(text: Option<&str>) -> Option<String> {
    let id = identity::real_value(text?.lines().next()?)?;
    (id != "iid-datasource-none").then_some(id)
}

fn collect(root: &HostRoot) -> Outcome {
    let mut outcome = Outcome::new();
    let dmi_dir_exists = root.exists(DMI_DIR);
    let raws = if dmi_dir_exists {
        read_fields(|file| root.read_trimmed(format!("{DMI_DIR}/{file}")))
    } else {
        vec![Raw::Absent; FIELDS.len()]
    };
    let resolved = resolve(raws, dmi_dir_exists, || match smbios::load(root) {
        Ok((bytes, version)) => Table::Decoded(Box::new(smbios::decode(&bytes, version))),
        Err(e) if e.is_permission_denied() => Table::Denied,
        Err(_) => Table::Unavailable,
    });

    let mut item = Item::new(class::SYSTEM, "system");
    for (f, text) in FIELDS.iter().zip(&resolved.text) {
        item.set(f.attr, value(f.kind, text.as_deref()));
    }

    let text_of = |attr: &str| {
        FIELDS
            .iter()
            .position(|f| f.attr == attr)
            .and_then(|i| resolved.text.get(i))
            .and_then(Option::as_deref)
    };
    let dmi = DmiStrings {
        sys_vendor: text_of("vendor"),
        product_name: text_of("product"),
        product_version: text_of("product_version"),
        board_vendor: text_of("board_vendor"),
        bios_vendor: text_of("bios_vendor"),
        bios_version: text_of("bios_version"),
    };
    item.set("virtualization", detect_virtualization(root, dmi));
    item.set("container", detect_container(root));
    let instance = root
        .read_trimmed("/var/lib/cloud/data/instance-id")
        .ok()
        .flatten();
    item.set("cloud_instance_id", cloud_instance_id(instance.as_deref()));
    outcome.push(item);

    if !resolved.denied.is_empty() {
        outcome.permission_denied(format!(
            "{}: permission denied; run as root or grant CAP_DAC_READ_SEARCH",
            resolved.denied.join(", ")
        ));
    }
    for f in resolved.failures {
        outcome.warn(f);
    }
    outcome
}

fn detect_virtualization(root: &HostRoot, dmi: DmiStrings<'_>) -> &'static str {
    let read = |p: &str| root.read_trimmed(p).ok().flatten();
    let hypervisor_type = read("/sys/hypervisor/type");
    let xen_capabilities = read("/proc/xen/capabilities");
    let clocksources = read("/sys/devices/system/clocksource/clocksource0/available_clocksource");
    let mut evidence = VirtEvidence {
        dmi,
        hypervisor_type: hypervisor_type.as_deref(),
        xen_capabilities: xen_capabilities.as_deref(),
        clocksources: clocksources.as_deref(),
        hypervisor_flag: None,
    };
    let answer = virtualization(&evidence);
    if answer != "none" {
        return answer;
    }
    // Only now pay for /proc/cpuinfo (large on big hosts, slow to generate on some
    // kernels): its first processor's flags are enough.
    evidence.hypervisor_flag = Some(
        read_head(root, "/proc/cpuinfo", 16 * 1024)
            .is_some_and(|head| virt::cpuinfo_has_hypervisor_flag(&head)),
    );
    virtualization(&evidence)
}

/// The first `cap` bytes of a host file, lossily as text.
fn read_head(root: &HostRoot, host_path: &str, cap: u64) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(root.path(host_path)).ok()?;
    let mut buf = Vec::new();
    file.take(cap).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn detect_container(root: &HostRoot) -> String {
    let environ = root.read_capped("/proc/1/environ", 256 * 1024).ok();
    let systemd_container = root.read_trimmed("/run/systemd/container").ok().flatten();
    let cgroup = root
        .read_to_string_capped("/proc/1/cgroup", 256 * 1024)
        .ok();
    let release = root
        .read_trimmed("/proc/sys/kernel/osrelease")
        .ok()
        .flatten();
    container(&ContainerEvidence {
        pid1_environ: environ.as_deref(),
        systemd_container: systemd_container.as_deref(),
        containerenv: root.exists("/run/.containerenv"),
        dockerenv: root.exists("/.dockerenv"),
        pid1_cgroup: cgroup.as_deref(),
        kernel_release: release.as_deref(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn attr<'a>(resolved: &'a Resolved, attr: &str) -> Option<&'a str> {
        let i = FIELDS.iter().position(|f| f.attr == attr).unwrap();
        resolved.text[i].as_deref()
    }

    fn sysfs(files: &[(&str, Result<&str, bool>)]) -> Vec<Raw> {
        read_fields(|file| match files.iter().find(|(f, _)| *f == file) {
            Some((_, Ok(v))) => Ok(Some((*v).to_owned())),
            Some((_, Err(true))) => Err(ReadError::PermissionDenied(PathBuf::from(file))),
            Some((_, Err(false))) => Err(ReadError::Io {
                path: PathBuf::from(file),
                source: std::io::Error::other("EIO"),
            }),
            None => Ok(None),
        })
    }

    #[test]
    fn root_only_files_are_reported_as_denied_never_as_empty() {
        let raws = sysfs(&[
            ("sys_vendor", Ok("Dell Inc.")),
            ("product_serial", Err(true)),
            ("product_uuid", Err(true)),
            ("board_serial", Err(true)),
            ("chassis_serial", Err(true)),
        ]);
        let r = resolve(raws, true, || Table::Denied);
        assert_eq!(attr(&r, "vendor"), Some("Dell Inc."));
        assert_eq!(attr(&r, "serial_number"), None);
        assert_eq!(
            r.denied,
            vec![
                "/sys/class/dmi/id/product_serial",
                "/sys/class/dmi/id/product_uuid",
                "/sys/class/dmi/id/board_serial",
                "/sys/class/dmi/id/chassis_serial",
            ]
        );
    }

    #[test]
    fn the_table_fills_what_sysfs_lacks_or_refuses() {
        let decoded = Decoded {
            system: Some(smbios::System {
                manufacturer: Some("From Table".into()),
                serial_number: Some("SER123".into()),
                uuid: Some("4c4c4544-0058-4a10-8032-b7c04f505132".into()),
                ..smbios::System::default()
            }),
            chassis: Some(smbios::Chassis {
                type_code: Some(0x17),
                ..smbios::Chassis::default()
            }),
            ..Decoded::default()
        };
        let raws = sysfs(&[
            ("sys_vendor", Ok("From Sysfs")),
            ("product_serial", Err(true)),
        ]);
        let r = resolve(raws, true, || Table::Decoded(Box::new(decoded.clone())));
        assert!(r.denied.is_empty());
        assert_eq!(attr(&r, "vendor"), Some("From Sysfs"));
        assert_eq!(attr(&r, "serial_number"), Some("SER123"));
        assert_eq!(attr(&r, "chassis_type"), Some("23"));

        // No DMI directory at all, and the table is root-only.
        let r = resolve(vec![Raw::Absent; FIELDS.len()], false, || Table::Denied);
        assert_eq!(r.denied, vec![smbios::TABLE_PATH]);
        // No DMI directory and no table (a container): nothing denied, all null.
        let r = resolve(vec![Raw::Absent; FIELDS.len()], false, || {
            Table::Unavailable
        });
        assert!(r.denied.is_empty() && r.text.iter().all(Option::is_none));
    }

    #[test]
    fn the_table_is_not_read_when_sysfs_has_everything() {
        let raws = vec![Raw::Value("x".into()); FIELDS.len()];
        let r = resolve(raws, true, || unreachable!("table read"));
        assert!(r.denied.is_empty());
        let raws = sysfs(&[("sys_vendor", Err(false))]);
        let r = resolve(raws, true, || Table::Unavailable);
        assert_eq!(r.failures.len(), 1);
    }

    #[test]
    fn values_drop_placeholders_and_name_chassis_types() {
        assert_eq!(
            value(Kind::Text, Some("To Be Filled By O.E.M.")),
            AttrValue::Null
        );
        assert_eq!(value(Kind::Text, Some("Default string")), AttrValue::Null);
        assert_eq!(value(Kind::Text, None), AttrValue::Null);
        assert_eq!(
            value(Kind::Uuid, Some("4C4C4544-0058-4A10-8032-B7C04F505132")),
            AttrValue::from("4c4c4544-0058-4a10-8032-b7c04f505132")
        );
        assert_eq!(
            value(Kind::Uuid, Some("00000000-0000-0000-0000-000000000000")),
            AttrValue::Null
        );
        assert_eq!(
            value(Kind::ChassisType, Some("23")),
            AttrValue::from("Rack Mount Chassis")
        );
        assert_eq!(
            value(Kind::ChassisType, Some("3")),
            AttrValue::from("Desktop")
        );
        assert_eq!(value(Kind::ChassisType, Some("200")), AttrValue::Null);
        assert_eq!(value(Kind::ChassisType, Some("x")), AttrValue::Null);
        assert_eq!(
            value(Kind::AssetTag, Some("No Asset Information")),
            AttrValue::Null
        );
        assert_eq!(
            value(Kind::AssetTag, Some("IT-004217")),
            AttrValue::from("IT-004217")
        );
    }

    #[test]
    fn cloud_init_without_a_datasource_has_no_instance_id() {
        assert_eq!(cloud_instance_id(Some("iid-datasource-none")), None);
        assert_eq!(
            cloud_instance_id(Some("i-0abc123def4567890\n")).as_deref(),
            Some("i-0abc123def4567890")
        );
        assert_eq!(cloud_instance_id(Some("")), None);
        assert_eq!(cloud_instance_id(None), None);
    }
}
