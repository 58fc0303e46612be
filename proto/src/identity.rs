//! Placeholder detection for host identity values, shared by the agent (which reports
//! placeholders as absent) and the collector (which never matches hosts on them): a
//! placeholder serial shared by a thousand machines would merge them into one host.

/// Values vendors put where a serial or UUID should be.
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "system serial number",
    "system product name",
    "chassis serial number",
    "base board serial number",
    "not specified",
    "not applicable",
    "none",
    "null",
    "n/a",
    "na",
    "0",
    "00000000",
    "0123456789",
    "123456789",
    "serial",
    "oem",
    "o.e.m.",
    "unknown",
    "invalid",
];

/// True for values that identify nothing: empty, vendor placeholders, and UUIDs (or
/// serials) made only of zeros or only of F.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    if PLACEHOLDERS.contains(&lower.as_str()) {
        return true;
    }
    let hex: String = lower
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | ':'))
        .collect();
    !hex.is_empty() && (hex.chars().all(|c| c == '0') || hex.chars().all(|c| c == 'f'))
}

/// `Some(trimmed)` unless the value is a placeholder.
pub fn real_value(value: &str) -> Option<String> {
    (!is_placeholder(value)).then(|| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        for p in [
            "To Be Filled By O.E.M.",
            "Default string",
            "System Serial Number",
            "0",
            "None",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "  ",
            "00:00:00:00:00:00",
        ] {
            assert!(is_placeholder(p), "{p}");
        }
        for real in [
            "4C4C4544-0042-3510-8052-B4C04F564E32",
            "CZ1234ABCD",
            "VMware-42 1a",
        ] {
            assert!(!is_placeholder(real), "{real}");
        }
    }
}
